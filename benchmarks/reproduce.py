"""The papers' protocol, run with fastvae, printed beside the published figures.

    python benchmarks/reproduce.py --data DIR --config yahoo --recipe all --budget full
    python benchmarks/reproduce.py --data ../shared/data/yelp --config ptb --budget small --jobs 2   # CPU, reduced
    python benchmarks/reproduce.py --config tiny --budget small --device cuda --out DIR          # built-in corpus

Protocol (recipes.md): the config's model sizes, SGD with the recipe's learning rate, clip 5, separate
encoder/decoder optimisers, decay-on-plateau with best-checkpoint reload, the recipe's KL schedule, and
the test split evaluated with the best-validation checkpoint: IW-NLL with K samples, KL, both MI
estimators (per batch as He et al. report it, whole split), active units, PPL, and a linear probe on mu
when the data has labels. Every run goes through `fastvae.Trainer` (and its `fastvae.evaluate`).

Data (`--data DIR`):
- `train.txt`, `valid.txt`, `test.txt` (one sentence per line, optionally `label<TAB>text`), or
- the Yelp sentiment layout `sentiment.{train,dev,test}.{0,1}` (the label is the file suffix). When only
  the `dev` files exist (as in ../shared/data/yelp), their sentences are shuffled with the seed and split
  80/10/10 into train/valid/test. The labelled files are written to `<out>/data/` (never into the repo).
- no `--data`: the built-in grammar corpus (labelled with its topic factor).

Budgets (`--budget`): `full` is the protocol (all sentences, 100 epochs, 10-epoch warm-ups, K=500);
`medium` and `small` cap the sentences and epochs for a CPU and shorten the recipes' warm-up (and the
pretraining phase) in proportion, so the schedules complete within the run. `small` (10k sentences, 10
epochs, K=50, the aggressive phase capped at 2 epochs, `cyclical` as Fu et al.'s PTB script: its variant
over its 40 epochs, since the paper form collapses at this size) is the measured CPU run: under 30 minutes
with `--jobs 2` on 2 cores. Every budget keeps the papers' SGD (the ptb-script variant brings its own Adam).
`--epochs`, `--max-train`, `--max-eval`, `--iw-samples`, `--max-vocab` override one value of the budget
(`--warm-up`, `--pretrain-epochs`, `--aggressive-epochs` too; `--aggressive-epochs 0` leaves the aggressive
phase to He et al.'s MI stop alone; `--epochs` sets every recipe's epochs). The budget used is printed and
written with the results.

Output: `<out>/reproduce.json` and `<out>/reproduce.md` (rewritten after every recipe, so a stopped run
still leaves its table), one run directory per recipe (`<out>/<recipe>/`: config.json, metrics.jsonl,
best.pt, training.png). With `--table PATH` the markdown table is also written there (for example
benchmarks/results/reproduce-yelp-cpu-sgd.md).

Options: `--set RECIPE.OPTION=VALUE` gives one recipe an option of `fastvae train` (for example
`--set cyclical.cycles=2`, or `--set cyclical.variant=paper --set cyclical.epochs=10` for the paper form;
checked before any training, and listed under the table). `--jobs N` runs N recipes at a time, each in
its own process (`<out>/jobs/<recipe>/`, with its log) with the cores divided among them, and merges their
results into one table; on a 2-core CPU `--jobs 2` halves the wall clock.
`--time-limit MINUTES` stops the run after that much wall clock the way Ctrl-C / SIGTERM do: the recipes
running keep their last validation figures (marked partial), the ones not started are listed as skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import random
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFIGS = ("ptb", "yahoo", "yelp", "tiny", "synthetic")
PAPER_RECIPES = ("vae", "beta", "cyclical", "aggressive", "pretrain-fb")
ALL_RECIPES = PAPER_RECIPES + ("lm",)
REMEDIES = ("beta", "cyclical", "aggressive", "pretrain-fb")


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    max_train: int | None  # training sentences (None: all)
    max_eval: int | None  # validation and test sentences each (None: all)
    epochs: int
    warm_up: float | None  # KL warm-up epochs of aggressive / pretrain-fb (None: the recipe's 10)
    pretrain_epochs: int | None  # pretrain-fb's phase-1 epochs (None: as many as `epochs`)
    iw_samples: int
    max_vocab: int | None
    optimizer: str | None = None  # None: the recipe's (the papers' SGD); "adam": Adam 1e-3
    aggressive_epochs: int | None = None  # cap on aggressive's aggressive phase (None: He et al.'s MI stop alone)
    # per-recipe settings, as `--set` gives them (the user's `--set` wins; `--epochs` drops the budget's epochs)
    recipe_settings: dict = dataclasses.field(default_factory=dict)


BUDGETS = {
    # The papers' SGD throughout: with Adam 1e-3 `beta` and `cyclical` collapse within the first epoch
    # (benchmarks/results/archive); with SGD the encoder leaves its initial saddle after ~4 epochs, so
    # `small` gives it 10. An aggressive epoch costs ~20 plain ones on a CPU (40-45 encoder sub-steps per
    # step) and the MI stop had not fired after 3 epochs at this size, so `small` caps that phase at 2
    # epochs to finish within 30 minutes (measured: benchmarks/results/reproduce-yelp-cpu-sgd.md).
    # `cyclical` in its paper form collapses at this size (AU only during the low-weight ramps, 0 after an
    # epoch at weight 1, over 10 and 40 epochs); Fu et al.'s own PTB script (beta from 0.1, 10-epoch cycles,
    # cosine learning-rate restarts, Adam 1e-3) over its 40 epochs keeps units at weight 1, so `small` runs that.
    "small": Budget("small", max_train=10000, max_eval=2000, epochs=10, warm_up=2.0, pretrain_epochs=5,
                    iw_samples=50, max_vocab=10000, aggressive_epochs=2,
                    recipe_settings={"cyclical": {"variant": "ptb-script", "epochs": 40}}),
    "medium": Budget("medium", max_train=50000, max_eval=3000, epochs=15, warm_up=5.0, pretrain_epochs=5,
                     iw_samples=500, max_vocab=None),
    "full": Budget("full", max_train=None, max_eval=None, epochs=100, warm_up=None, pretrain_epochs=None,
                   iw_samples=500, max_vocab=None),
}
OPTIMIZER_CHOICES = ("recipe", "sgd", "adam")

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
DEFAULT_PUBLISHED = {"yahoo": "yahoo", "yelp": "yelp15", "ptb": "none", "tiny": "none", "synthetic": "none"}
PUBLISHED_CAVEAT = {
    ("yelp", "yelp15"): "published figures are He et al.'s Yelp15 (long reviews, the yahoo-size model); the yelp "
                        "config and ../shared/data/yelp are short sentences: compare the pattern (collapse or "
                        "not, KL, MI), not the NLL values",
}


# ----------------------------------------------------------------------------- arguments
def parse_recipes(text: str) -> list[str]:
    if text in ("all", "paper"):
        return list(PAPER_RECIPES) + (["lm"] if text == "all" else [])
    names = [r.strip() for r in text.split(",") if r.strip()]
    if not names:
        raise ValueError("--recipe is empty: give a comma-separated list, 'paper' or 'all'")
    unknown = [r for r in names if r not in ALL_RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {', '.join(unknown)}: expected names among {', '.join(ALL_RECIPES)}, "
                         f"'paper' or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"--recipe lists a recipe twice: {text!r}")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the papers' protocol with fastvae and print it beside the "
                                            "published figures (see the module docstring)")
    p.add_argument("--data", default=None, help="corpus folder (train/valid/test.txt, or Yelp sentiment.*.0/1); "
                                                 "default: the built-in grammar corpus")
    p.add_argument("--config", choices=CONFIGS, default="ptb", help="model sizes (recipes.md)")
    p.add_argument("--recipe", default="paper", help="comma-separated recipes, 'paper' (vae,beta,cyclical,"
                                                      "aggressive,pretrain-fb) or 'all' (paper + lm)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the budget's epochs")
    p.add_argument("--max-train", type=_positive_int, default=None, help="override the budget's training sentences")
    p.add_argument("--max-eval", type=_positive_int, default=None, help="override the budget's valid/test sentences")
    p.add_argument("--iw-samples", type=_positive_int, default=None, help="override the budget's IW samples K")
    p.add_argument("--max-vocab", type=_positive_int, default=None, help="override the budget's vocabulary cap")
    p.add_argument("--warm-up", type=float, default=None,
                   help="override the budget's KL warm-up epochs (aggressive, pretrain-fb)")
    p.add_argument("--pretrain-epochs", type=_positive_int, default=None,
                   help="override the budget's pretraining epochs (pretrain-fb)")
    p.add_argument("--aggressive-epochs", type=_non_negative_int, default=None,
                   help="override the budget's cap on aggressive's aggressive phase, in epochs (0: no cap, "
                        "He et al.'s MI stop alone)")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default=None,
                   help="override the budget's optimiser (recipe: the recipe's own, the papers' SGD)")
    p.add_argument("--published", choices=["auto", "yahoo", "yelp15", "none"], default="auto",
                   help="which published column to print (auto: from --config)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="compute precision of every recipe (fastvae.precision; default fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/reproduce-<config>-<budget>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the recipes' runs already in --out (otherwise such a folder is refused)")
    p.add_argument("--table", default=None, help="also write the markdown table to this path")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 helps on a machine shared with other jobs; "
                        "with --jobs: the cores divided among the jobs)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="RECIPE.OPTION=VALUE",
                   help="a recipe option for one recipe, e.g. --set cyclical.cycles=2 (repeatable; the options of "
                        "`fastvae train`, with underscores: fb_mode, target_kl, ...)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="wall-clock limit: then the running recipes stop and keep their last validation figures "
                        "(marked partial) and the ones not started are skipped")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="run the recipes in this many processes at once (a 2-core CPU: 2 jobs of 1 thread each)")
    return p


def parse_settings(items: list[str], recipes: list[str]) -> dict[str, dict]:
    """{recipe: {option: value}} from `--set RECIPE.OPTION=VALUE` items, checked against the recipes' options.

    Values are read as JSON where they parse (2, 0.5, true) and as text otherwise (linear, dim)."""
    from fastvae.training.recipes import resolve_options

    settings: dict[str, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        recipe, dot, option = key.strip().partition(".")
        if not sep or not dot or not recipe or not option:
            raise ValueError(f"--set {item!r}: expected RECIPE.OPTION=VALUE, e.g. cyclical.cycles=2")
        if recipe not in recipes:
            raise ValueError(f"--set {item!r}: recipe {recipe!r} is not among the recipes run ({', '.join(recipes)})")
        words = {"true": True, "false": False, "none": None, "null": None}
        if text.strip().lower() in words:  # True/false/None as well as JSON's spellings
            value = words[text.strip().lower()]
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text.strip()
        settings.setdefault(recipe, {})[option.strip().replace("-", "_")] = value
    for recipe, options in settings.items():
        recipe_only, _ = split_epochs(options, recipe)
        resolve_options(recipe, recipe_only)  # unknown or conflicting options fail here, before any training
    return settings


def split_epochs(options: dict, recipe: str, default: int | None = None) -> tuple[dict, int | None]:
    """(the recipe's own options, its epochs): `epochs` is a training setting that `--set` also takes."""
    options = dict(options)
    epochs = options.pop("epochs", default)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"{recipe}.epochs must be a positive whole number of epochs, got {epochs!r}")
    return options, epochs


def resolve_args(argv=None):
    """Parsed arguments, the budget with overrides applied, the recipe list; clear errors for bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        recipes = parse_recipes(args.recipe)
    except ValueError as exc:
        parser.error(str(exc))
    if args.data is not None and not os.path.isdir(args.data):
        parser.error(f"--data {args.data!r}: no such folder (expected train/valid/test.txt or Yelp sentiment.*.0/1)")
    budget = BUDGETS[args.budget]
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        parser.error(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    if args.warm_up is not None and not (math.isfinite(args.warm_up) and args.warm_up > 0):
        parser.error(f"--warm-up must be a positive number of epochs, got {args.warm_up}")
    overrides = {"epochs": args.epochs, "max_train": args.max_train, "max_eval": args.max_eval,
                 "iw_samples": args.iw_samples, "max_vocab": args.max_vocab, "warm_up": args.warm_up,
                 "pretrain_epochs": args.pretrain_epochs, "aggressive_epochs": args.aggressive_epochs}
    if args.optimizer is not None:
        budget = dataclasses.replace(budget, optimizer=None if args.optimizer == "recipe" else args.optimizer)
    budget = dataclasses.replace(budget, **{k: v for k, v in overrides.items() if v is not None})
    if budget.aggressive_epochs == 0:  # --aggressive-epochs 0: no cap
        budget = dataclasses.replace(budget, aggressive_epochs=None)
    if args.epochs is not None:  # --epochs is every recipe's epochs, the budget's per-recipe ones too
        budget = dataclasses.replace(budget, recipe_settings={
            recipe: {k: v for k, v in options.items() if k != "epochs"}
            for recipe, options in budget.recipe_settings.items()})
    if budget.pretrain_epochs is not None and budget.pretrain_epochs > budget.epochs:
        budget = dataclasses.replace(budget, pretrain_epochs=budget.epochs)
    try:
        args.recipe_settings = parse_settings(args.settings, recipes)
        from fastvae.training.recipes import build_recipe

        for recipe in recipes:  # every value checked with the budget's options, before any training
            build_recipe(recipe, split_epochs(recipe_options(recipe, budget, args.recipe_settings), recipe)[0])
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    published = DEFAULT_PUBLISHED[args.config] if args.published == "auto" else args.published
    out = args.out or os.path.join("runs", f"reproduce-{args.config}-{budget.name}")
    return args, budget, recipes, published, out


# ----------------------------------------------------------------------------- data
YELP_SPLITS = ("train", "dev", "test")


def find_layout(directory: str) -> str:
    """'plain' (train/valid/test.txt) or 'yelp' (sentiment.<split>.<label>); clear error otherwise."""
    names = set(os.listdir(directory))
    if {"train.txt", "valid.txt", "test.txt"} <= names:
        return "plain"
    if any(n.startswith("sentiment.") and n.rsplit(".", 1)[-1].isdigit() for n in names):
        return "yelp"
    missing = sorted({"train.txt", "valid.txt", "test.txt"} - names)
    raise ValueError(f"{directory}: neither train.txt/valid.txt/test.txt (missing {', '.join(missing)}) nor Yelp "
                     f"sentiment.<train|dev|test>.<label> files")


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def read_yelp(directory: str) -> dict[str, list[tuple[int, str]]]:
    """{split: [(label, sentence)]} from sentiment.<split>.<label> files (label = the file suffix)."""
    found: dict = {}
    for name in sorted(os.listdir(directory)):
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "sentiment" or not parts[2].isdigit():
            continue
        if parts[1] not in YELP_SPLITS:
            raise ValueError(f"{os.path.join(directory, name)}: unknown split {parts[1]!r} (expected "
                             f"{', '.join(YELP_SPLITS)})")
        found.setdefault(parts[1], []).extend((int(parts[2]), s) for s in _read_lines(os.path.join(directory, name)))
    if not found:
        raise ValueError(f"{directory}: no sentiment.<split>.<label> files")
    return found


def split_sentences(rows: list, seed: int, max_train=None, max_eval=None, *, splits=None) -> dict[str, list]:
    """train/valid/test lists: `splits` given (a dict with train/dev/test) are capped; otherwise `rows` are
    shuffled with `seed` and split 80/10/10, then capped."""
    rng = random.Random(seed)
    if splits is None:
        rows = list(rows)
        rng.shuffle(rows)
        n = len(rows)
        if n < 3:
            raise ValueError(f"too few sentences to split into train/valid/test: {n}")
        n_eval = max(1, n // 10)
        splits = {"test": rows[:n_eval], "valid": rows[n_eval:2 * n_eval], "train": rows[2 * n_eval:]}
    else:
        splits = {k: list(v) for k, v in splits.items()}
        for v in splits.values():
            rng.shuffle(v)
    caps = {"train": max_train, "valid": max_eval, "test": max_eval}
    return {k: (splits[k][:caps[k]] if caps[k] else splits[k]) for k in ("train", "valid", "test")}


def prepare_data(directory: str | None, out: str, budget: Budget, seed: int) -> tuple[str | None, dict]:
    """(folder with train/valid/test.txt for fastvae.data.load_corpus, or None for the built-in corpus;
    a description of what was read)."""
    if directory is None:
        return None, {"source": "built-in grammar corpus"}
    layout = find_layout(directory)
    data_dir = os.path.join(out, "data")
    os.makedirs(data_dir, exist_ok=True)
    if layout == "yelp":
        found = read_yelp(directory)
        if {"train", "test"} <= set(found):
            splits = split_sentences([], seed, budget.max_train, budget.max_eval,
                                     splits={"train": found["train"], "valid": found.get("dev", []),
                                             "test": found["test"]})
            how = "sentiment.train/dev/test"
        else:
            rows = [r for split in found.values() for r in split]
            splits = split_sentences(rows, seed, budget.max_train, budget.max_eval)
            how = f"sentiment.{'/'.join(sorted(found))} shuffled (seed {seed}) and split 80/10/10"
        for name, rows in splits.items():
            with open(os.path.join(data_dir, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.writelines(f"{label}\t{text}\n" for label, text in rows)
    else:
        splits = {}
        for name in ("train", "valid", "test"):
            lines = _read_lines(os.path.join(directory, f"{name}.txt"))
            splits[name] = lines
        capped = split_sentences([], seed, budget.max_train, budget.max_eval, splits=splits) \
            if (budget.max_train or budget.max_eval) else splits
        if capped is splits:
            return directory, {"source": os.path.abspath(directory), "layout": "train/valid/test.txt",
                               "sentences": {k: len(v) for k, v in splits.items()}}
        splits = capped
        how = f"train/valid/test.txt, capped at random (seed {seed})"
        for name, rows in splits.items():
            with open(os.path.join(data_dir, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.writelines(f"{line}\n" for line in rows)
    return data_dir, {"source": os.path.abspath(directory), "layout": how,
                      "sentences": {k: len(v) for k, v in splits.items()}}


def load_data(data_dir: str | None, budget: Budget):
    from fastvae.data import BUILTIN_CORPORA, load_corpus

    if data_dir is None:
        return BUILTIN_CORPORA["grammar"]()
    return load_corpus(data_dir, max_vocab=budget.max_vocab)


# ----------------------------------------------------------------------------- runs
def recipe_options(recipe: str, budget: Budget, settings: dict | None = None) -> dict:
    """The recipe's options under the budget (none under `full`: the protocol's defaults), then the
    user's `--set` options for it (they win). May hold `epochs` (see `split_epochs`)."""
    options = {}
    if recipe == "vae":  # the published baseline is "VAE + anneal": He et al.'s 0.1 -> 1 over 10 epochs
        options.update(kl_start=0.1, warm_up=10.0)
    if budget.warm_up is not None and recipe in ("vae", "aggressive", "pretrain-fb"):
        options["warm_up"] = budget.warm_up
    if budget.pretrain_epochs is not None and recipe == "pretrain-fb":
        options["pretrain_epochs"] = budget.pretrain_epochs
    if budget.aggressive_epochs is not None and recipe == "aggressive":
        options["aggressive_epochs"] = budget.aggressive_epochs
    options.update(budget.recipe_settings.get(recipe, {}))
    options.update((settings or {}).get(recipe, {}))
    return options


def test_bleu(model, corpus, seed: int) -> dict:
    """Reconstruction BLEU of the test split (the best checkpoint's weights, which `fit` leaves in the model):
    greedy and beam (5), from the posterior mean and from a sample; {} when sacreBLEU is not installed."""
    import torch

    from fastvae.evaluation import reconstruction_bleu

    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 101)
    try:  # it checks for sacreBLEU before decoding anything
        return reconstruction_bleu(model, corpus.test, corpus.vocab, generator=gen)
    except ImportError as exc:
        print(f"reproduce: reconstruction BLEU skipped: {exc}", file=sys.stderr)
        return {}


SS_LABEL_COUNTS = (100, 1000)  # of the papers' 100 / 500 / 1,000 / 2,000 / 10,000 (fastvae probe runs all)


def semi_supervised(model, corpus, seed: int) -> dict:
    """Li et al.'s semi-supervised classification (frozen encoder, linear classifier) at SS_LABEL_COUNTS labelled
    training sentences, test accuracy: {"ss_acc_<N>": acc}; {} without labels."""
    from fastvae.evaluation.semi_supervised import semi_supervised_accuracy

    if any(split.labels is None for split in (corpus.train, corpus.valid, corpus.test)):
        return {}
    out = {}
    for count in SS_LABEL_COUNTS:
        if count <= len(corpus.train):
            result = semi_supervised_accuracy(model, corpus.train, corpus.valid, corpus.test, num_labels=count,
                                              seed=seed)
            out[f"ss_acc_{count}"] = result["test_acc"]
    return out


def model_config_for(recipe: str, options: dict, config: str) -> str:
    """The model a recipe trains: `config`, except that cyclical's ptb-script variant at the ptb size trains Fu et
    al.'s own model (ptb-fu2019), as their script does."""
    if recipe == "cyclical" and options.get("variant") == "ptb-script" and config == "ptb":
        return "ptb-fu2019"
    return config


def run_recipe(recipe: str, corpus, args, budget: Budget, out: str, corpus_info: dict) -> dict:
    from fastvae.training import Trainer

    options = recipe_options(recipe, budget, getattr(args, "recipe_settings", None))
    own_options, epochs = split_epochs(options, recipe, budget.epochs)
    model_config = model_config_for(recipe, own_options, args.config)
    start = time.perf_counter()
    extra = {"optimizer": budget.optimizer} if budget.optimizer else {}
    trainer = Trainer(None, corpus, recipe=recipe, out_dir=os.path.join(out, recipe), config=model_config,
                      epochs=epochs, iw_samples=budget.iw_samples, device=args.device, seed=args.seed,
                      precision=getattr(args, "precision", "fp32"),
                      progress=args.progress, corpus_info=corpus_info, recipe_options=own_options,
                      overwrite=getattr(args, "overwrite", False), **extra)
    try:
        test = trainer.fit()
    except KeyboardInterrupt:
        raise RecipeInterrupted(_partial_result(recipe, options, trainer, start)) from None
    seconds = time.perf_counter() - start
    if recipe != "lm":
        test.update(test_bleu(trainer.model, corpus, args.seed))
        test.update(semi_supervised(trainer.model, corpus, args.seed))
    train_seconds = sum(r.get("seconds", 0.0) for r in trainer.history if r.get("split") == "train")
    return {"recipe": recipe, "options": options, "test": test, "best_epoch": trainer.best_epoch,
            "seconds": seconds, "train_seconds": train_seconds, "stopped_reason": trainer.stopped_reason,
            "model_config": model_config,
            "epochs_run": sum(1 for r in trainer.history if r.get("split") == "train")}


class RecipeInterrupted(Exception):
    """A recipe stopped by Ctrl-C / SIGTERM; `.result` holds its last validation metrics (or None)."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result


def _partial_result(recipe, options, trainer, start) -> dict | None:
    """The interrupted recipe's last validation record, marked as such (no test metrics exist)."""
    valid = [r for r in trainer.history if r.get("split") == "valid"]
    if not valid:
        return None
    last = valid[-1]
    metrics = {k: last[k] for k in ("rec", "kl", "elbo", "mi", "mi_batch", "au", "nll", "ppl", "probe_acc")
               if k in last}
    return {"recipe": recipe, "options": options, "test": metrics, "partial": True,
            "partial_note": f"interrupted: validation metrics of epoch {last.get('epoch')} "
                            f"({last.get('phase')}), no test evaluation",
            "seconds": time.perf_counter() - start,
            "train_seconds": sum(r.get("seconds", 0.0) for r in trainer.history if r.get("split") == "train"),
            "epochs_run": sum(1 for r in trainer.history if r.get("split") == "train")}


# ----------------------------------------------------------------------------- the table
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


def _write_atomically(path: str, text: str) -> None:
    """Temporary file, then rename: an interrupt never leaves a truncated table or JSON behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_outputs(out: str, table: str, payload: dict, extra_table: str | None) -> None:
    _write_atomically(os.path.join(out, "reproduce.json"), json.dumps(payload, indent=1, default=str))
    title = f"# Reproduction: config {payload['config']}, budget {payload['budget']['name']}\n\n"
    for path in [os.path.join(out, "reproduce.md")] + ([extra_table] if extra_table else []):
        _write_atomically(path, title + f"Command: `{payload['command']}`\n\n" + table)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- the time limit
_TIME_LIMIT = {"minutes": None, "reached": False}


def arm_time_limit(minutes: float | None) -> None:
    """After `minutes` of wall clock, interrupt the run the way Ctrl-C does (partial results are kept)."""
    if not minutes:
        return
    _TIME_LIMIT["minutes"] = minutes

    def reached(signum, frame):
        _TIME_LIMIT["reached"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, reached)
    signal.setitimer(signal.ITIMER_REAL, minutes * 60.0)


def disarm_time_limit() -> None:
    if _TIME_LIMIT["minutes"]:
        signal.setitimer(signal.ITIMER_REAL, 0.0)


def _interrupt_reason() -> str:
    if _TIME_LIMIT["reached"]:
        return f"stopped by the {_TIME_LIMIT['minutes']:g}-minute time limit"
    return "interrupted"


# ----------------------------------------------------------------------------- several recipes at once
def child_argv(args, recipe: str, out: str, threads: int) -> list[str]:
    """The command line of one `--jobs` worker: this script, one recipe, its own output folder."""
    argv = [sys.executable, os.path.abspath(__file__), "--recipe", recipe, "--out", out, "--threads", str(threads),
            "--config", args.config, "--budget", args.budget, "--published", args.published, "--device", args.device,
            "--seed", str(args.seed), "--precision", getattr(args, "precision", "fp32")]
    if getattr(args, "overwrite", False):
        argv.append("--overwrite")
    if args.data is not None:
        argv += ["--data", os.path.abspath(args.data)]
    for flag in ("epochs", "max_train", "max_eval", "iw_samples", "max_vocab", "warm_up", "pretrain_epochs",
                 "aggressive_epochs", "optimizer"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    for option, value in args.recipe_settings.get(recipe, {}).items():
        argv += ["--set", f"{recipe}.{option}={json.dumps(value)}"]
    return argv


def job_order(recipes: list[str], budget: Budget, settings: dict) -> list[str]:
    """The long recipes start first: aggressive (its inner loop), then those given more epochs, then
    pretrain-fb (two phases)."""
    epochs = {r: split_epochs(recipe_options(r, budget, settings), r, budget.epochs)[1] for r in recipes}
    return sorted(recipes, key=lambda r: (r != "aggressive", -epochs[r], r != "pretrain-fb"))


def run_in_jobs(args, recipes: list[str], out: str, budget: Budget) -> tuple[list[dict], str]:
    """Runs each recipe in its own worker process, `args.jobs` at a time; returns (runs in the recipes' order,
    status). Ctrl-C / SIGTERM stops the workers the same way (each keeps its partial result)."""
    import subprocess

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    pending = job_order(recipes, budget, args.recipe_settings)  # the table keeps `recipes` order
    running, finished = {}, {}
    interrupted = False
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                recipe = pending.pop(0)
                folder = os.path.join(out, "jobs", recipe)
                os.makedirs(folder, exist_ok=True)
                log = open(os.path.join(folder, "log.txt"), "w")
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run live
                # Workers get their own session: a Ctrl-C or `timeout` aimed at this process group reaches only
                # this process, which then stops each worker once (a second signal would cut a worker's
                # partial-result write short). Signals wait while a worker is started and registered, so none
                # can be left running unknown.
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
                try:
                    running[recipe] = (subprocess.Popen(child_argv(args, recipe, folder, threads), stdout=log,
                                                        stderr=subprocess.STDOUT, env=env, start_new_session=True),
                                       log)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                print(f"started {recipe} ({threads} thread{'s' if threads > 1 else ''}; log {log.name})", flush=True)
            time.sleep(1.0)
            for recipe, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    finished[recipe] = proc.returncode
                    del running[recipe]
                    print(f"finished {recipe} (exit {proc.returncode})", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for recipe, (proc, log) in running.items():
            proc.wait()
            log.close()
            finished[recipe] = proc.returncode
    runs, problems = [], []
    for recipe in recipes:
        path = os.path.join(out, "jobs", recipe, "reproduce.json")
        if recipe not in finished:
            problems.append(f"{recipe} not started")
            continue
        if not os.path.exists(path):
            problems.append(f"{recipe} failed (exit {finished[recipe]}; see {os.path.join(out, 'jobs', recipe)})")
            continue
        try:
            with open(path) as handle:
                child = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{recipe}: unreadable results {path} ({exc})")
            continue
        runs.extend(child["runs"])
        if child.get("status") != "finished":
            problems.append(f"{recipe}: {child.get('status', 'no status')}")
    if interrupted:
        problems.insert(0, _interrupt_reason())
    return runs, ("finished" if not problems else "; ".join(problems))


def main(argv=None) -> int:
    args, budget, recipes, published, out = resolve_args(argv)
    arm_time_limit(args.time_limit)
    try:
        if args.jobs > 1 and len(recipes) > 1:
            return main_jobs(args, budget, recipes, published, out, argv)
        return main_sequential(args, budget, recipes, published, out, argv)
    finally:
        disarm_time_limit()


def main_sequential(args, budget, recipes, published, out, argv) -> int:
    """main() without --jobs: the recipes one after the other in this process."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(out, exist_ok=True)
    data_dir, data_info = prepare_data(args.data, out, budget, args.seed)
    corpus = load_data(data_dir, budget)
    corpus_info = {"data": os.path.abspath(data_dir)} if data_dir else {"builtin": "grammar"}
    if budget.max_vocab and data_dir:
        corpus_info["max_vocab"] = budget.max_vocab
    command = "python benchmarks/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"command": command, "config": args.config, "precision": args.precision,
               "budget": dataclasses.asdict(budget), "recipes": recipes,
               "published": published, "data": data_info, "device": args.device, "seed": args.seed,
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "load_average_start": list(os.getloadavg()), "vocab_size": len(corpus.vocab),
               "threads": _torch_threads(), "runs": []}
    print(f"reproduce: config {args.config}, recipes {', '.join(recipes)}, budget {budget}, data {data_info}, "
          f"vocabulary {len(corpus.vocab)}, out {out}", flush=True)
    status = "finished"
    for i, recipe in enumerate(recipes):
        print(f"\n=== {recipe} ({i + 1}/{len(recipes)}) ===", flush=True)
        try:
            payload["runs"].append(run_recipe(recipe, corpus, args, budget, out, corpus_info))
            done = status if i + 1 == len(recipes) else f"running ({i + 1}/{len(recipes)} recipes done)"
            table = render_table(payload["runs"], config=args.config, published=published, budget=budget,
                                 data_info=data_info, device=args.device, iw_samples=budget.iw_samples, status=done)
            payload["load_average_now"] = list(os.getloadavg())
            write_outputs(out, table, payload, args.table)
        except (KeyboardInterrupt, RecipeInterrupted) as exc:
            status = f"{_interrupt_reason()} during {recipe}"
            if isinstance(exc, RecipeInterrupted) and exc.result is not None:
                payload["runs"].append(exc.result)
                status += f" ({exc.result['partial_note']})"
            if recipes[i + 1:]:
                status += f"; not run: {', '.join(recipes[i + 1:])}"
            break
    disarm_time_limit()
    table = render_table(payload["runs"], config=args.config, published=published, budget=budget,
                         data_info=data_info, device=args.device, iw_samples=budget.iw_samples, status=status)
    payload["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    payload["status"] = status
    write_outputs(out, table, payload, args.table)
    print("\n" + table, flush=True)
    return 0 if status == "finished" else 1


def main_jobs(args, budget, recipes, published, out, argv) -> int:
    """main() with --jobs: the recipes run in worker processes; one merged table, as main() writes it."""
    os.makedirs(out, exist_ok=True)
    _, data_info = prepare_data(args.data, out, budget, args.seed)
    command = "python benchmarks/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"command": command, "config": args.config, "precision": args.precision,
               "budget": dataclasses.asdict(budget), "recipes": recipes,
               "published": published, "data": data_info, "device": args.device, "seed": args.seed,
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "load_average_start": list(os.getloadavg()), "jobs": args.jobs,
               "threads": args.threads or max(1, (os.cpu_count() or 1) // args.jobs)}
    print(f"reproduce: config {args.config}, recipes {', '.join(recipes)} in {args.jobs} jobs, budget {budget}, "
          f"data {data_info}, out {out}", flush=True)
    start = time.perf_counter()
    payload["runs"], status = run_in_jobs(args, recipes, out, budget)
    disarm_time_limit()
    payload["wall_seconds"] = time.perf_counter() - start
    payload["load_average_now"] = list(os.getloadavg())
    payload["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    payload["status"] = status
    table = render_table(payload["runs"], config=args.config, published=published, budget=budget,
                         data_info=data_info, device=args.device, iw_samples=budget.iw_samples,
                         status=f"{status}; {args.jobs} recipes at a time, {payload['threads']} thread(s) each, "
                                f"{payload['wall_seconds'] / 60:.1f} min wall clock in all")
    write_outputs(out, table, payload, args.table)
    print("\n" + table, flush=True)
    return 0 if status == "finished" else 1


if __name__ == "__main__":
    # SIGTERM (e.g. `timeout`) stops like Ctrl-C: the table keeps what finished, and the interrupted
    # recipe's last validation metrics, marked partial
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
