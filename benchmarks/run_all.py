"""Runs every benchmark suite and writes benchmarks/results/<hardware>.json.

    python benchmarks/run_all.py --quick          # CPU: one shape per op, the ptb size only (minutes)
    python benchmarks/run_all.py                  # everything (a GPU, or a patient CPU)
    python benchmarks/run_all.py --suites training,iw_nll
    python benchmarks/render.py                   # then: README table + PNG chart from the results

What it does, in one process per suite so the suites do not disturb each other:
1. measures this machine's fp32 GEMM rate (floor.py) at the start and at the end (the machine may be
   shared: the load average is recorded beside the timings, and both GEMM rates are kept),
2. runs each `benchmarks/bench_<suite>.py` with pytest-benchmark (`-k quick` in quick mode), keeping the
   raw pytest-benchmark JSON under benchmarks/results/raw/<hardware>/<suite>.json,
3. writes one summary per hardware: every benchmark's timings, its provider, the ratio to the group's
   reference provider measured in the same run, and for the end-to-end suites the items per second
   (tokens, sentences) and the fraction of the FLOP floor.
<hardware> is a slug of the GPU name when a GPU is used, else of the CPU model name.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

RESULTS_FORMAT = "fastvae-bench-results/1"
# `-k` expression of each suite's quick mode: `quick` in the test ids by convention; a suite without such ids
# gets its smallest size here
QUICK_SELECT = {"decoder": "ptb"}
# provider names that serve as the reference of a group, most preferred first (case-insensitive)
REFERENCE_PROVIDERS = ("baseline", "hf-plain", "hf-plain-bf16", "eager", "reference", "nn.lstm", "lstm", "cudnn",
                       "onednn", "torch")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def reference_provider(providers) -> str | None:
    """The provider of a group that the others are compared to, or None when the group has none."""
    lowered = {p.lower(): p for p in providers if isinstance(p, str)}
    for name in REFERENCE_PROVIDERS:
        if name in lowered:
            return lowered[name]
    return None


def summarize(raw: dict, suite: str, gflops: float | None, bf16_gflops: float | None = None) -> list[dict]:
    """Rows of one suite from pytest-benchmark's JSON: timings, throughput, ratio, fraction of floor (a row whose
    extra_info says precision bf16 is measured against the bf16 GEMM rate, when there is one)."""
    rows = []
    for bench in raw.get("benchmarks", []):
        stats, extra = bench["stats"], dict(bench.get("extra_info") or {})
        row = {"suite": suite, "name": bench["name"], "group": bench.get("group") or bench["name"],
               "provider": extra.pop("provider", None), "shape": extra.pop("shape", None),
               "device": extra.pop("device", None), "median_s": stats["median"], "min_s": stats["min"],
               "mean_s": stats["mean"], "stddev_s": stats["stddev"], "rounds": stats["rounds"], "extra": extra}
        items = extra.get("items_per_round")
        if items:
            row["item"] = extra.get("item", "items")
            row["per_s_median"] = items / stats["median"]
            row["per_s_best"] = items / stats["min"]
        flops = extra.get("flops_per_round")
        rate = gflops
        if extra.get("precision") == "bf16":
            rate = bf16_gflops
            row["floor_precision"] = "bf16"
        if flops and rate:
            gflops_row = rate
            # the floor: the time the workload's GEMM FLOPs take at the measured rate
            floor_s = flops / (gflops_row * 1e9)
            row["floor_s"] = floor_s
            row["fraction_of_floor_median"] = floor_s / stats["median"]
            row["fraction_of_floor_best"] = floor_s / stats["min"]
        rows.append(row)
    add_ratios(rows)
    return rows


def measure_bf16_gemm(device: str) -> dict | None:
    """The bf16 GEMM rate where the hardware multiplies bf16 natively (fastvae.precision's rule), else None."""
    import floor
    import torch
    from fastvae.precision import resolve

    if resolve("auto", device) != "bf16":
        return None
    return floor.measure_gemm_gflops(device, dtype=torch.bfloat16)


def add_ratios(rows: list[dict]) -> None:
    """speedup = reference provider's time / this row's time, within a group (same run)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        ref_name = reference_provider([m["provider"] for m in members])
        ref = next((m for m in members if m["provider"] == ref_name), None)
        for m in members:
            m["reference_provider"] = ref_name
            if ref is not None and m["median_s"] > 0:
                m["speedup_median"] = ref["median_s"] / m["median_s"]
                m["speedup_best"] = ref["min_s"] / m["min_s"] if m["min_s"] > 0 else None


def discover_suites(selected=None) -> dict[str, str]:
    suites = {}
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(path)[len("bench_"):-len(".py")]
        suites[name] = path
    if selected:
        unknown = [s for s in selected if s not in suites]
        if unknown:
            raise SystemExit(f"unknown suite(s) {', '.join(unknown)}: available: {', '.join(suites)}")
        suites = {k: v for k, v in suites.items() if k in selected}
    return suites


def run_suite(path: str, raw_json: str, quick: bool, timeout: float, extra_args=(), name: str = "") -> dict:
    select = ["-k", QUICK_SELECT.get(name, "quick")] if quick else []
    cmd = [sys.executable, "-m", "pytest", path, "--benchmark-only", f"--benchmark-json={raw_json}", "-q",
           "-p", "no:cacheprovider", "-o", "addopts="] + select + list(extra_args)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
    return {"command": " ".join(["python"] + cmd[1:]), "returncode": rc, "seconds": time.perf_counter() - start,
            "output_tail": out[-3000:]}


def main(argv=None) -> int:
    import torch

    import floor

    parser = argparse.ArgumentParser(description="Run every benchmark suite; write benchmarks/results/<hardware>.json")
    parser.add_argument("--quick", action="store_true", help="one shape per op, the small model sizes (CPU)")
    parser.add_argument("--suites", default=None, help="comma-separated suite names (default: every bench_*.py)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available (the suites pick the device the same way)")
    parser.add_argument("--suite-timeout", type=float, default=3600.0, help="seconds per suite")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other suites' rows of an existing <hardware>.json (re-run some suites only)")
    args = parser.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    env_note = None
    if device == "cpu" and torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the suites choose cuda when they see it
        env_note = "CUDA_VISIBLE_DEVICES= (CPU run on a GPU machine)"
    suites = discover_suites(args.suites.split(",") if args.suites else None)

    hardware = floor.hardware_name(device)
    slug = floor.hardware_slug(hardware)
    raw_dir = os.path.join(args.out, "raw", slug)
    os.makedirs(raw_dir, exist_ok=True)
    print(f"hardware: {hardware} ({device}); results -> {os.path.join(args.out, slug + '.json')}", flush=True)
    load_start = load_average()
    gemm_start = floor.measure_gemm_gflops(device)
    print(f"fp32 GEMM: {gemm_start['gflops']:.1f} GFLOP/s; load average {load_start}", flush=True)
    gemm_bf16 = measure_bf16_gemm(device)
    if gemm_bf16:
        print(f"bf16 GEMM: {gemm_bf16['gflops']:.1f} GFLOP/s", flush=True)

    result = {"format": RESULTS_FORMAT, "hardware": hardware, "slug": slug, "device": device,
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "quick": args.quick,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
              + (f" --suites {args.suites}" if args.suites else ""),
              "git_commit": _git_commit(), "env_note": env_note, "load_average_start": load_start,
              "gemm_start": gemm_start, "gemm_bf16_start": gemm_bf16, "cpu_fp32_gemm": _cpu_fp32_gemm(),
              "suites": {}, "rows": []}
    for name, path in suites.items():
        raw_json = os.path.join(raw_dir, f"{name}.json")
        if os.path.exists(raw_json):
            os.unlink(raw_json)
        print(f"--- suite {name}: {os.path.relpath(path, ROOT)}", flush=True)
        info = run_suite(path, raw_json, args.quick, args.suite_timeout, name=name)
        info["load_average_after"] = load_average()
        rows = []
        if os.path.exists(raw_json):
            with open(raw_json) as handle:
                rows = summarize(json.load(handle), name, gemm_start["gflops"],
                                 gemm_bf16["gflops"] if gemm_bf16 else None)
        info["benchmarks"] = len(rows)
        result["suites"][name] = info
        result["rows"].extend(rows)
        status = "ok" if info["returncode"] == 0 else f"FAILED (rc {info['returncode']})"
        print(f"    {status}: {len(rows)} benchmarks in {info['seconds']:.0f}s; load {info['load_average_after']}",
              flush=True)
        if info["returncode"] != 0:
            print("\n".join("    | " + line for line in info["output_tail"].splitlines()[-15:]), flush=True)
    if args.merge and os.path.exists(os.path.join(args.out, f"{slug}.json")):
        with open(os.path.join(args.out, f"{slug}.json")) as handle:
            previous = json.load(handle)
        kept = {n: s for n, s in previous.get("suites", {}).items() if n not in result["suites"]}
        for info in kept.values():  # each kept suite says which run measured it
            info.setdefault("measured_in", {"started": previous.get("started"), "command": previous.get("command"),
                                            "load_average_start": previous.get("load_average_start"),
                                            "gemm_gflops": previous.get("gemm_start", {}).get("gflops")})
        result["suites"] = {**kept, **result["suites"]}
        result["rows"] = [r for r in previous.get("rows", []) if r["suite"] in kept] + result["rows"]
        result["merged_from"] = previous.get("started")
    result["gemm_end"] = floor.measure_gemm_gflops(device)
    result["load_average_end"] = load_average()
    result["floors"] = floor.floors(gemm_start["gflops"])
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = os.path.join(args.out, f"{slug}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"wrote {path}; GEMM at the end {result['gemm_end']['gflops']:.1f} GFLOP/s; "
          f"render with: python benchmarks/render.py", flush=True)
    failed = [n for n, s in result["suites"].items() if s["returncode"] != 0]
    if failed:
        print(f"suites with failures: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def _cpu_fp32_gemm() -> str | None:
    """Which library fastvae's fused ops multiply CPU float32 in (csrc/gemm.h), as the suites' processes choose."""
    try:
        import fastvae._C as core
    except ImportError:
        return None
    getter = getattr(core, "cpu_fp32_gemm_backend", None)
    return getter() if getter is not None else None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
