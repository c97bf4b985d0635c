"""Renders benchmarks/results/<hardware>.json into the README's performance table and a PNG chart.

    python benchmarks/render.py                       # README.md table + results/<hardware>.md + .png
    python benchmarks/render.py --check               # exit 1 if README.md's table is not current

The README table sits between the markers `<!-- perf-table:start -->` and `<!-- perf-table:end -->`
(everything between them is replaced). Each hardware gets its headline rows (end-to-end training in
tokens/s per recipe, IW-NLL in sentences/s) with the ratio to the reference-style baseline and the
fraction of the FLOP floor, the load average it ran under, and the command that reproduces it; the
full list of every suite's groups goes to benchmarks/results/<hardware>.md. A missing GPU result is
said in words (never a silent blank), and so is any benchmark that did not produce a number.
Speeds are the best round ("best") and the median round ("median"): the machine may be shared by
other jobs, and the best round is the least disturbed one; ratios are taken within one run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
RESULTS_FORMAT = "fastvae-bench-results/1"
HEADLINE_SUITES = ("training", "iw_nll")
GPU_PENDING = ("**GPU: pending.** No GPU figures yet: no GPU was lent to the session that produced these tables. "
               "On a GPU machine, `bash scripts/gpu_check.sh` runs every suite there (`benchmarks/run_all.py "
               "--device cuda`); copying its `<hardware>.json` into `benchmarks/results/` and running "
               "`python benchmarks/render.py` adds its table here.")


def load_results(directory: str) -> list[dict]:
    """Every fastvae results summary in `directory` (other JSON files, e.g. raw pytest-benchmark ones, skipped)."""
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not readable JSON ({exc})") from exc
        if isinstance(data, dict) and data.get("format") == RESULTS_FORMAT:
            data["_path"] = path
            found.append(data)
    return found


def fmt_rate(value) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_fraction(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def fmt_seconds(value) -> str:
    if value is None:
        return "n/a"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} us"


def _groups(rows):
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return groups


def headline_rows(result: dict) -> list[dict]:
    """One line per end-to-end workload and fastvae precision: fastvae vs baseline, speedup, fractions of the
    floor (a bf16 row's floor is the bf16 GEMM rate's)."""
    lines = []
    for group, members in _groups([r for r in result["rows"] if r["suite"] in HEADLINE_SUITES]).items():
        by = {m["provider"]: m for m in members}
        base = by.get("baseline")
        for provider, precision in (("fastvae", "fp32"), ("fastvae-bf16", "bf16")):
            fast = by.get(provider)
            if fast is None and provider != "fastvae":
                continue  # bf16 not measured on this hardware
            any_row = fast or base
            extra = any_row["extra"]
            if any_row["suite"] == "training":
                label = f"train {extra.get('config')} `{extra.get('recipe')}`"
            else:
                label = f"IW-NLL {extra.get('config')} K=500"
            lines.append({
                "label": f"{label} {precision}", "unit": f"{any_row.get('item', 'items')}/s",
                "shape": any_row["shape"], "fastvae": fast, "baseline": base,
                "speedup": fast.get("speedup_best") if fast and base else None,
                "speedup_median": fast.get("speedup_median") if fast and base else None,
            })
    return lines


def _cell_rate(row) -> str:
    if row is None:
        return "not measured (failed or not run: see the results JSON)"
    return f"{fmt_rate(row.get('per_s_best'))} ({fmt_rate(row.get('per_s_median'))})"


def _cell_floor(row) -> str:
    if row is None:
        return "n/a"
    return fmt_fraction(row.get("fraction_of_floor_best"))


def hardware_header(result: dict) -> str:
    load = result.get("load_average_start")
    load_text = "/".join(f"{x:.2f}" for x in load) if load else "n/a"
    end = result.get("load_average_end")
    if end:
        load_text += " at the start, " + "/".join(f"{x:.2f}" for x in end) + " at the end"
    gemm = result.get("gemm_start", {}).get("gflops")
    gemm_end = result.get("gemm_end", {}).get("gflops")
    threads = result.get("torch_threads")
    device = "GPU" if result.get("device") == "cuda" else f"CPU, {result.get('cpu_count')} cores, {threads} threads"
    return (f"**{result['hardware']}** ({device}; torch {result.get('torch')}; {result.get('started', '?')}; "
            f"commit {result.get('git_commit') or '?'}). Load average {load_text}. Measured fp32 GEMM rate "
            f"{gemm:.1f} GFLOP/s (at the end of the run {gemm_end:.1f}): the FLOP floor uses the first"
            + (f"; bf16 GEMM rate {result['gemm_bf16_start']['gflops']:.1f} GFLOP/s, the floor of the bf16 rows. "
               if result.get("gemm_bf16_start") else ". ")
            + (f"fastvae's fused ops multiply CPU float32 through {result['cpu_fp32_gemm']} (csrc/gemm.h). "
               if result.get("cpu_fp32_gemm") and result.get("device") != "cuda" else "")
            + f"Command: `{result.get('command')}`.")


def headline_table(result: dict) -> str:
    lines = ["| workload | shape | fastvae best (median) | baseline best (median) | speedup best (median) "
             "| fastvae / floor | baseline / floor |", "|---|---|---|---|---|---|---|"]
    rows = headline_rows(result)
    for h in rows:
        lines.append(f"| {h['label']} ({h['unit']}) | {h['shape']} | {_cell_rate(h['fastvae'])} | "
                     f"{_cell_rate(h['baseline'])} | {fmt_ratio(h['speedup'])} ({fmt_ratio(h['speedup_median'])}) | "
                     f"{_cell_floor(h['fastvae'])} | {_cell_floor(h['baseline'])} |")
    if not rows:
        lines.append("| (no end-to-end benchmark produced a number in this run) | | | | | | |")
    return "\n".join(lines)


def suite_table(result: dict, suites=None) -> str:
    """Every group of the given suites: each provider's median time and speedup vs the group's reference."""
    lines = ["| suite | group | provider | median | best | speedup vs reference (median) | / floor |",
             "|---|---|---|---|---|---|---|"]
    rows = [r for r in result["rows"] if suites is None or r["suite"] in suites]
    for group, members in _groups(rows).items():
        for m in members:
            ref = m.get("reference_provider")
            speed = fmt_ratio(m.get("speedup_median")) + (f" vs {ref}" if ref else " (no reference provider)")
            lines.append(f"| {m['suite']} | {group} | {m['provider']} | {fmt_seconds(m['median_s'])} | "
                         f"{fmt_seconds(m['min_s'])} | {speed} | {fmt_fraction(m.get('fraction_of_floor_median'))} |")
    return "\n".join(lines)


def suite_status(result: dict) -> str:
    parts = []
    for name, info in result.get("suites", {}).items():
        ok = info.get("returncode") == 0
        earlier = info.get("measured_in")
        when = f", measured in an earlier run started {earlier.get('started')}" if earlier else ""
        parts.append(f"`{name}` {'ok' if ok else 'FAILED (rc ' + str(info.get('returncode')) + ')'}"
                     f" ({info.get('benchmarks', 0)} benchmarks{when})")
    return "Suites: " + ", ".join(parts) + "." if parts else "Suites: none ran."


def readme_block(results: list[dict], results_dir: str, readme_dir: str = ROOT) -> str:
    rel = os.path.relpath(results_dir, readme_dir)
    out = [START, "",
           "Each figure is measured side by side with a plain-PyTorch baseline written like the reference code "
           "(nn.LSTM, eager losses, a `.item()` per step, full backward in every aggressive sub-step, IW-NLL one "
           "sentence at a time in 100-sample chunks) and compared with the FLOP floor of this machine "
           "(`benchmarks/floor.py`: the workload's GEMM FLOPs at the measured fp32 GEMM rate). "
           "Speeds are best round (median round); text of 10 words + `</s>`, vocabulary 6,300, batch 32. "
           "Reproduce: `python benchmarks/run_all.py --quick && python benchmarks/render.py`.", ""]
    cpu = [r for r in results if r.get("device") != "cuda"]
    gpu = [r for r in results if r.get("device") == "cuda"]
    for result in cpu + gpu:
        slug = result["slug"]
        out += [hardware_header(result), "", headline_table(result), "",
                f"{suite_status(result)} Every group of every suite: [`{rel}/{slug}.md`]({rel}/{slug}.md); "
                f"chart: [`{rel}/{slug}.png`]({rel}/{slug}.png).", ""]
    if not cpu:
        out += ["**CPU: no results yet** (`python benchmarks/run_all.py --quick` writes them).", ""]
    if not gpu:
        out += [GPU_PENDING, ""]
    reproductions = sorted(glob.glob(os.path.join(results_dir, "reproduce-*.md")))
    if reproductions:
        links = ", ".join(f"[`{rel}/{os.path.basename(p)}`]({rel}/{os.path.basename(p)})" for p in reproductions)
        out += [f"Reduced reproductions of the papers' protocol (`benchmarks/reproduce.py`): {links}.", ""]
    out.append(END)
    return "\n".join(out)


def replace_block(text: str, block: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README must hold exactly one '{START}' followed by one '{END}' "
                         f"(add them where the performance table goes)")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def hardware_markdown(result: dict) -> str:
    return "\n".join([f"# Benchmarks on {result['hardware']}", "", hardware_header(result), "",
                      "## End to end", "", headline_table(result), "", "## Every suite", "",
                      suite_table(result), "", suite_status(result), ""])


def render_chart(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = headline_rows(result)
    if not rows:
        return
    labels = [h["label"].replace("`", "") for h in rows]
    fast = [(h["fastvae"] or {}).get("fraction_of_floor_best") or 0.0 for h in rows]
    base = [(h["baseline"] or {}).get("fraction_of_floor_best") or 0.0 for h in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], base, height=0.4, label="reference-style baseline", color="#999999")
    ax.barh([y - 0.2 for y in ys], fast, height=0.4, label="fastvae", color="#1f77b4")
    for y, h, f in zip(ys, rows, fast):
        if h["speedup"] is not None:
            ax.text(f + 0.005, y - 0.2, f"{h['speedup']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of the FLOP floor (best round; 1.0 = all GEMM FLOPs at the measured fp32 rate)")
    ax.set_title(f"{result['hardware']}: end-to-end throughput (labels: speedup vs baseline)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render benchmark results into README.md and PNG charts")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="results folder")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    parser.add_argument("--check", action="store_true", help="only check the README table is current")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    block = readme_block(results, args.results, os.path.dirname(os.path.abspath(args.readme)))
    with open(args.readme) as handle:
        text = handle.read()
    try:
        new_text = replace_block(text, block)
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new_text != text:
            print(f"{args.readme}: the performance table is not current; run python benchmarks/render.py",
                  file=sys.stderr)
            return 1
        return 0
    for result in results:
        with open(os.path.join(args.results, f"{result['slug']}.md"), "w") as handle:
            handle.write(hardware_markdown(result))
        if not args.no_chart:
            render_chart(result, os.path.join(args.results, f"{result['slug']}.png"))
    if new_text != text:
        with open(args.readme, "w") as handle:
            handle.write(new_text)
    print(f"rendered {len(results)} result file(s) into {args.readme}" + ("" if results else " (none found)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
