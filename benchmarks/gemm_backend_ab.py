"""Side by side in one process: fastvae's CPU float32 products through ATen's BLAS or through oneDNN
(csrc/gemm.h), with the reference-style baseline beside them, for training steps and IW-NLL at K=500.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/gemm_backend_ab.py --out benchmarks/results/NAME

Each round runs every case once, in an order that rotates from round to round; the table gives medians. Writes
NAME.json (every timing) and NAME.md (the table, the hardware and the command).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_iw_nll  # noqa: E402
import bench_training  # noqa: E402
from floor import hardware_name  # noqa: E402

import fastvae._C as core  # noqa: E402

BACKENDS = ("aten", "onednn")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cases(configs, steps):
    """(name, unit, items per call, backend or None, callable) for every case."""
    cases = []
    for config in configs:
        for recipe in ("vae", "aggressive-substeps"):
            calls = 1 if recipe == "aggressive-substeps" else steps[config]
            tokens, _ = bench_training.flops_per_outer_step(config, recipe)
            fast = bench_training.fastvae_stepper(config, recipe, "fp32")
            base = bench_training.baseline_stepper(config, recipe)

            def repeat(step, n=calls):
                def run():
                    for _ in range(n):
                        step()
                return run

            label = f"train {config} {recipe}"
            cases.append((label, "tokens/s", tokens * calls, None, repeat(base)))
            for name in BACKENDS:
                cases.append((label, "tokens/s", tokens * calls, name, repeat(fast)))
        num = bench_iw_nll.SENTENCES[config]
        label = f"IW-NLL {config} K={bench_iw_nll.SAMPLES}"
        cases.append((label, "sentences/s", num, None, bench_iw_nll.baseline_evaluator(config, num)))
        fast_iw = bench_iw_nll.fastvae_evaluator(config, num)
        for name in BACKENDS:
            cases.append((label, "sentences/s", num, name, fast_iw))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="ptb,yahoo")
    parser.add_argument("--render-only", action="store_true", help="rewrite NAME.md from NAME.json")
    args = parser.parse_args()
    if args.render_only:
        with open(args.out + ".json") as handle:
            render(json.load(handle), args.out)
        return 0
    configs = args.configs.split(",")
    steps = {"ptb": 5, "yahoo": 2}
    cases = _cases(configs, steps)
    for _, _, _, backend_name, fn in cases:  # warm-up: every case once
        core.set_cpu_fp32_gemm_backend(backend_name or "auto")
        fn()
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for round_index in range(args.rounds):
        order = list(range(len(cases)))
        shift = round_index % len(order)
        for i in order[shift:] + order[:shift]:
            _, _, _, backend_name, fn = cases[i]
            core.set_cpu_fp32_gemm_backend(backend_name or "auto")
            times[i].append(_timed(fn))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    core.set_cpu_fp32_gemm_backend("auto")

    rows = []
    for i, (label, unit, items, backend_name, _) in enumerate(cases):
        median = statistics.median(times[i])
        provider = "baseline" if backend_name is None else f"fastvae fp32, {backend_name}"
        rows.append({"workload": label, "provider": provider, "unit": unit, "items_per_call": items,
                     "seconds": times[i], "median_s": median, "rate": items / median})
    for row in rows:
        base = next(r for r in rows if r["workload"] == row["workload"] and r["provider"] == "baseline")
        row["vs_baseline"] = row["rate"] / base["rate"]
    info = {"hardware": hardware_name("cpu"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "auto_choice": core.cpu_fp32_gemm_backend(), "rounds": args.rounds,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/gemm_backend_ab.py " + " ".join(sys.argv[1:]), "rows": rows}
    with open(args.out + ".json", "w") as handle:
        json.dump(info, handle, indent=1)
    render(info, args.out)
    return 0


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"


def render(info: dict, out: str) -> None:
    rows = info["rows"]
    lines = [f"# fastvae's CPU float32 products: ATen's BLAS or oneDNN ({info['hardware']})", "",
             f"{info['hardware']}, torch {info['torch']}, {info['threads']} thread(s), {info['date']}; "
             f"`auto` chooses **{info['auto_choice']}** here. Medians of {info['rounds']} rounds, every case once per "
             f"round in a rotating order, one process. Command: `{info['command']}`.", "",
             "| workload | provider | rate | vs baseline |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['workload']} | {row['provider']} | {_rate(row['rate'])} {row['unit']} | "
                     f"{row['vs_baseline']:.2f}x |")
    with open(out + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
