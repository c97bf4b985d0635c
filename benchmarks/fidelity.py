"""Does the bf16 fast path compute the same thing? Reads reduced reproductions run in fp32 (two seeds) and in bf16
(`benchmarks/reproduce.py ... --precision bf16`), compares them recipe by recipe, and evaluates the IW-NLL of one
trained model in bf16 against float64.

    python benchmarks/fidelity.py --fp32 runs/fid-fp32-s0 runs/fid-fp32-s1 --bf16 runs/fid-bf16-s0 \\
        --iw-checkpoint runs/fid-bf16-s0/vae/best.pt --out benchmarks/results/fidelity-yelp-amd-epyc

What it checks (issue 14, item 6): per recipe, the validation ELBO of every epoch of the bf16 run lies within the
run-to-run spread of the two fp32 seeds (|bf16 - mean fp32| against |fp32 seed 0 - fp32 seed 1|, with a floor
of 0.5% of the ELBO since two seeds can agree by chance at one epoch), the collapse outcome (test AU 0 or not)
is the same, and the test AU lies within the seeds' range widened by their difference; and the IW-NLL of one
model in bf16 is within 0.05 nats per sentence of the same model, the same importance samples, in float64.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def read_run(folder: str, recipe: str) -> dict:
    """Validation ELBO per epoch (last phase) and the test metrics of one recipe of a reproduce.py run."""
    path = os.path.join(folder, recipe, "metrics.jsonl")
    if not os.path.exists(path):  # --jobs N runs each recipe in its own worker folder
        path = os.path.join(folder, "jobs", recipe, recipe, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"fidelity: {path} not found: run benchmarks/reproduce.py with --out {folder} first")
    records = [json.loads(line) for line in open(path) if line.strip()]
    last_phase = [r for r in records if r.get("split") == "valid"][-1]["phase"]
    valid = [r for r in records if r.get("split") == "valid" and r["phase"] == last_phase]
    test = next((r for r in records if r.get("split") == "test"), None)
    return {"elbo": [r["rec"] + r["kl"] for r in valid], "au": [int(r["au"]) for r in valid],
            "test": test, "seconds": sum(r.get("seconds", 0.0) for r in records if r.get("split") == "train")}


def compare_recipe(recipe: str, fp32: list[dict], bf16: dict) -> dict:
    epochs = min(len(bf16["elbo"]), *(len(r["elbo"]) for r in fp32))
    rows, inside = [], 0
    for e in range(epochs):
        seeds = [r["elbo"][e] for r in fp32]
        spread = max(abs(seeds[0] - seeds[1]), 0.005 * abs(sum(seeds) / 2))
        gap = abs(bf16["elbo"][e] - sum(seeds) / 2)
        ok = gap <= spread
        inside += ok
        rows.append({"epoch": e + 1, "fp32": seeds, "bf16": bf16["elbo"][e], "gap": gap, "spread": spread, "ok": ok})
    au32 = [int(r["test"]["au"]) for r in fp32]
    au16 = int(bf16["test"]["au"])
    widen = abs(au32[0] - au32[1])
    au_ok = min(au32) - widen <= au16 <= max(au32) + widen
    # collapsed = no active unit; when the two fp32 seeds disagree, matching either one counts as the same
    collapse_same = (au16 == 0) in {au == 0 for au in au32}
    return {"recipe": recipe, "epochs": rows, "epochs_within_spread": inside, "epochs_compared": epochs,
            "au_fp32": au32, "au_bf16": au16, "au_within_spread": au_ok, "same_collapse_outcome": collapse_same,
            "test_elbo_fp32": [r["test"]["rec"] + r["test"]["kl"] for r in fp32],
            "test_elbo_bf16": bf16["test"]["rec"] + bf16["test"]["kl"],
            "train_seconds_fp32": [r["seconds"] for r in fp32], "train_seconds_bf16": bf16["seconds"]}


def iw_nll_bf16_vs_float64(checkpoint: str, data_dir: str, sentences: int, samples: int, seed: int) -> dict:
    """The IW-NLL of one checkpoint on the first `sentences` test sentences: bf16 weight copies vs float64, the
    same importance samples (the generator reseeded identically)."""
    from fastvae.data import load_corpus
    from fastvae.data.corpus import TextDataset
    from fastvae.evaluation import iw_nll
    from fastvae.training.checkpoint import load_model

    model, vocab, _ = load_model(checkpoint)
    test = load_corpus(data_dir, vocab=vocab).test
    subset = TextDataset(test.sentences[:sentences], name="test") if sentences < len(test) else test
    values = {}
    for name in ("float64", "bf16"):
        if name == "float64":
            model.double()
            model.set_compute_dtype(None)
        else:
            model.float()
            model.set_compute_dtype(torch.bfloat16)
        gen = torch.Generator().manual_seed(seed)
        values[name] = iw_nll(model, subset, K=samples, generator=gen).double()
    diff = (values["bf16"] - values["float64"])
    return {"checkpoint": checkpoint, "sentences": len(subset), "samples": samples,
            "iw_nll_float64": float(values["float64"].mean()), "iw_nll_bf16": float(values["bf16"].mean()),
            "mean_difference": float(diff.mean()), "max_abs_difference_per_sentence": float(diff.abs().max()),
            "within_0.05": abs(float(diff.mean())) <= 0.05}


def render(result: dict) -> str:
    lines = [f"# bf16 vs fp32 on real text ({result['hardware']})", "",
             f"Runs: fp32 {', '.join(result['fp32_runs'])}; bf16 {result['bf16_run']}. "
             "Validation ELBO per epoch of the last phase (nats per sentence), the bf16 run against the mean of two "
             "fp32 seeds; 'spread' is |seed 0 - seed 1| (at least 0.5% of the ELBO).", ""]
    for r in result["recipes"]:
        lines += [f"## {r['recipe']}", "",
                  f"- epochs with the bf16 ELBO inside the fp32 seeds' spread: {r['epochs_within_spread']} of "
                  f"{r['epochs_compared']}",
                  f"- test AU: fp32 {r['au_fp32'][0]} and {r['au_fp32'][1]}, bf16 {r['au_bf16']} "
                  f"({'within' if r['au_within_spread'] else 'OUTSIDE'} the seeds' spread); collapse outcome "
                  f"{'the same' if r['same_collapse_outcome'] else 'DIFFERENT'}",
                  f"- test ELBO: fp32 {r['test_elbo_fp32'][0]:.2f} / {r['test_elbo_fp32'][1]:.2f}, bf16 "
                  f"{r['test_elbo_bf16']:.2f}",
                  f"- training time (s): fp32 {r['train_seconds_fp32'][0]:.0f} / {r['train_seconds_fp32'][1]:.0f}, "
                  f"bf16 {r['train_seconds_bf16']:.0f}", "",
                  "| epoch | fp32 seed 0 | fp32 seed 1 | bf16 | bf16 - mean fp32 | spread | inside |",
                  "|---|---|---|---|---|---|---|"]
        for e in r["epochs"]:
            lines.append(f"| {e['epoch']} | {e['fp32'][0]:.3f} | {e['fp32'][1]:.3f} | {e['bf16']:.3f} | "
                         f"{e['bf16'] - sum(e['fp32']) / 2:+.3f} | {e['spread']:.3f} | {'yes' if e['ok'] else 'no'} |")
        lines.append("")
    iw = result.get("iw")
    if iw:
        lines += ["## IW-NLL, bf16 vs float64", "",
                  f"`{iw['checkpoint']}` on {iw['sentences']} test sentences, K={iw['samples']}, the same importance "
                  f"samples: float64 {iw['iw_nll_float64']:.4f}, bf16 {iw['iw_nll_bf16']:.4f} nats per sentence "
                  f"(mean difference {iw['mean_difference']:+.4f}, largest per sentence "
                  f"{iw['max_abs_difference_per_sentence']:.4f}): "
                  f"{'within' if iw['within_0.05'] else 'NOT within'} 0.05 nats.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", nargs=2, required=True, metavar="RUN", help="two fp32 reproduce.py runs (two seeds)")
    p.add_argument("--bf16", required=True, metavar="RUN", help="the bf16 run (seed of the first fp32 run)")
    p.add_argument("--recipes", default="vae,pretrain-fb")
    p.add_argument("--iw-checkpoint", default=None, help="a best.pt whose IW-NLL is compared in bf16 and float64")
    p.add_argument("--iw-sentences", type=int, default=200)
    p.add_argument("--iw-samples", type=int, default=500)
    p.add_argument("--out", required=True, help="output path without extension (.md and .json are written)")
    args = p.parse_args(argv)
    import floor

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    result = {"hardware": floor.hardware_name("cpu"), "fp32_runs": args.fp32, "bf16_run": args.bf16,
              "recipes": [compare_recipe(r, [read_run(f, r) for f in args.fp32], read_run(args.bf16, r))
                          for r in recipes]}
    if args.iw_checkpoint:
        data_dir = os.path.join(args.bf16, "data")
        result["iw"] = iw_nll_bf16_vs_float64(args.iw_checkpoint, data_dir, args.iw_sentences, args.iw_samples, 0)
    with open(args.out + ".json", "w") as handle:
        json.dump(result, handle, indent=1)
    with open(args.out + ".md", "w") as handle:
        handle.write(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
