"""The reproduction's table: fastvae's test metrics per recipe beside the papers' published figures.

`benchmarks/reproduce.py` runs the recipes and writes this table after each one; it lives here, apart from
the runner, with the figures it quotes (recipes.md, "Published figures"). Pure formatting: no torch, no files.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # reproduce.py imports this module, so the budget's type is named only for checkers
    from reproduce import Budget

# The recipes meant to prevent posterior collapse: the verdict line says which of them kept active units
REMEDIES = ("beta", "cyclical", "aggressive", "pretrain-fb")
# The semi-supervised columns (labelled training sentences): of the papers' 100 / 500 / 1,000 / 2,000 / 10,000,
# the ones reproduce.py measures (fastvae probe runs all)
SS_LABEL_COUNTS = (100, 1000)

# Published figures (recipes.md, "Published figures": He et al., ICLR 2019, Table 1):
# IW-500 NLL per sentence / KL / MI (per-batch estimator). The LM's NLL is exact.
PUBLISHED = {
    "yahoo": {"vae": (328.6, 0.0, 0.0), "beta": (328.5, 3.8, 2.2), "sa-vae": (327.4, 3.5, 1.9),
              "aggressive": (326.6, 6.7, 3.2), "lm": (328.1, None, None)},
    "yelp15": {"vae": (358.1, 0.0, 0.0), "beta": (358.8, 4.0, 1.8), "sa-vae": (355.9, 2.3, 1.3),
               "aggressive": (355.9, 3.7, 2.3), "lm": (357.3, None, None)},
}
PUBLISHED_LABELS = {"vae": "VAE + anneal", "beta": "beta-VAE 0.4", "sa-vae": "SA-VAE + anneal",
                    "aggressive": "aggressive + anneal", "lm": "LSTM-LM (exact)"}
PUBLISHED_SOURCE = "He et al. (ICLR 2019, submission version), Table 1, as quoted in recipes.md"
TRAINING_TIME_PUBLISHED = {"yahoo": {"aggressive": 2.20, "sa-vae": 9.9}, "yelp15": {"aggressive": 3.73, "sa-vae": 10.3}}
# The published column each --config is compared with when --published is auto
DEFAULT_PUBLISHED = {"yahoo": "yahoo", "yelp": "yelp15", "ptb": "none", "tiny": "none", "synthetic": "none"}
PUBLISHED_CAVEAT = {
    ("yelp", "yelp15"): "published figures are He et al.'s Yelp15 (long reviews, the yahoo-size model); the yelp "
                        "config and ../shared/data/yelp are short sentences: compare the pattern (collapse or "
                        "not, KL, MI), not the NLL values",
}


def _num(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def published_cells(recipe: str, published: str) -> str:
    if published == "none":
        return "-"
    row = PUBLISHED[published].get(recipe)
    if row is None:
        return "not published"
    nll, kl, mi = row
    return f"{nll:.1f}" if kl is None else f"{nll:.1f} / {kl:.1f} / {mi:.1f}"


def collapse_verdict(result: dict) -> str:
    test = result["test"]
    if "au" not in test:
        return "n/a (language model)"
    au = int(test["au"])
    return "collapsed (AU 0)" if au == 0 else f"{au} active unit{'s' if au > 1 else ''}"


def _optimizer_text(optimizer) -> str:
    if optimizer is None:
        return "the recipe's (the papers' SGD; `cyclical`'s ptb-script variant: Adam 1e-3, as Fu et al.'s script)"
    if optimizer == "adam":
        return "Adam 1e-3 (a deviation from the papers' SGD)"
    return optimizer


def _pair(test: dict, source: str) -> str:
    greedy, beam = test.get(f"bleu_greedy_{source}"), test.get(f"bleu_beam_{source}")
    return "-" if greedy is None else f"{greedy:.1f} / {beam:.1f}"


def render_table(runs: list[dict], *, config: str, published: str, budget: Budget, data_info: dict,
                 device: str, iw_samples: int, status: str = "finished") -> str:
    """The markdown table: our test metrics per recipe beside the published ones, then the verdict."""
    pub_title = {"yahoo": "Yahoo", "yelp15": "Yelp15"}.get(published)
    head = ("| recipe | NLL (IW-{k}) | KL | MI per batch | MI whole split | AU | PPL | probe acc | BLEU greedy / beam "
            "(mean) | BLEU greedy / beam (sample) | semi-sup. acc 100 / 1000 | epochs | train time | verdict | "
            "published NLL / KL / MI{p} |").format(k=iw_samples, p=f" ({pub_title})" if pub_title else "")
    lines = [head, "|" + "---|" * 15]
    for r in runs:
        t = r["test"]
        lines.append(" | ".join([
            f"| `{r['recipe']}`" + (" (partial)" if r.get("partial") else ""), _num(t.get("nll")), _num(t.get("kl")),
            _num(t.get("mi_batch")), _num(t.get("mi")),
            _num(int(t["au"]) if "au" in t else None), _num(t.get("ppl")), _num(t.get("probe_acc"), 3),
            _pair(t, "mean"), _pair(t, "sample"),
            " / ".join(_num(t.get(f"ss_acc_{n}"), 3) for n in SS_LABEL_COUNTS), str(r.get("epochs_run", "-")),
            f"{r.get('train_seconds', 0.0) / 60:.1f} min", collapse_verdict(r),
            published_cells(r["recipe"], published) + " |"]))
    notes = [f"Budget `{budget.name}`: {budget.max_train or 'all'} training sentences, {budget.max_eval or 'all'} "
             f"valid/test sentences, {budget.epochs} epochs, KL warm-up "
             f"{budget.warm_up if budget.warm_up is not None else 10} epochs (vae, aggressive, pretrain-fb), "
             f"pretraining "
             f"{budget.pretrain_epochs or budget.epochs} epochs, aggressive phase "
             f"{f'capped at {budget.aggressive_epochs} epochs' if budget.aggressive_epochs else 'until the MI stop'}, "
             f"IW samples {iw_samples}, vocabulary cap "
             f"{budget.max_vocab or 'none'}, optimiser {_optimizer_text(budget.optimizer)}. Model config `{config}`, "
             f"device {device}. Run status: {status}.",
             f"Data: {data_info.get('source')} ({data_info.get('layout', '')}; sentences "
             f"{data_info.get('sentences', 'built-in')}).",
             "MI per batch: He et al.'s estimator (their batches of 32, capped near log 32); MI whole split: the "
             "aggregate posterior over the whole test split. `vae` is He et al.'s VAE + anneal (KL weight 0.1 -> 1 "
             "over the warm-up), the published `vae` row."]
    notes.append("Semi-supervised accuracy: Li et al.'s protocol (`fastvae probe`): a linear classifier on the frozen "
                 "posterior mean, trained on 100 / 1,000 labelled training sentences, selected on validation loss, "
                 "test accuracy. Probe acc: a logistic regression on 80% of the test split's posterior means, scored "
                 "on the rest (a different, fastvae-only measure).")
    other_models = [f"`{r['recipe']}` trains `{r['model_config']}`" for r in runs
                    if r.get("model_config") not in (None, config)]
    if other_models:
        notes.append("Models: " + "; ".join(other_models) + " (Fu et al.'s own model, as their PTB script).")
    if published != "none":
        notes.append(f"Published: {PUBLISHED_SOURCE}.")
        caveat = PUBLISHED_CAVEAT.get((config, published))
        if caveat:
            notes.append(f"Caveat: {caveat}.")
    set_options = [f"`{r['recipe']}` " + ", ".join(f"{k}={v}" for k, v in r["options"].items())
                   for r in runs if r.get("options")]
    if set_options:
        notes.append("Recipe options (the budget's and `--set`): " + "; ".join(set_options) + ".")
    for r in runs:
        if r.get("partial"):
            notes.append(f"`{r['recipe']}` (partial): {r['partial_note']}; its NLL column is empty and its other "
                         f"columns are validation figures.")
    verdict = summary_line(runs)
    if verdict:
        notes.append(verdict)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def summary_line(runs: list[dict]) -> str | None:
    by = {r["recipe"]: r for r in runs if "au" in r["test"]}
    if "vae" not in by:
        return None
    vae_au = int(by["vae"]["test"]["au"])
    remedies = [(name, int(by[name]["test"]["au"])) for name in REMEDIES if name in by]
    partial = {name for name in by if by[name].get("partial")}
    keeping = [f"`{n}` ({au}{', partial run: validation figures' if n in partial else ''})"
               for n, au in remedies if au > 0]
    losing = [f"`{n}`" for n, au in remedies if au == 0]
    text = f"Contrast: `vae` {'collapsed (AU 0)' if vae_au == 0 else f'kept {vae_au} active units (no collapse)'}"
    if remedies:
        text += f"; remedies keeping active units: {', '.join(keeping) if keeping else 'none'}"
        if losing:
            text += f"; remedies that collapsed too: {', '.join(losing)}"
    return text + "."
