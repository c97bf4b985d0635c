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
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from render_reproduction import DEFAULT_PUBLISHED, SS_LABEL_COUNTS, render_table

CONFIGS = ("ptb", "yahoo", "yelp", "tiny", "synthetic")
PAPER_RECIPES = ("vae", "beta", "cyclical", "aggressive", "pretrain-fb")
ALL_RECIPES = PAPER_RECIPES + ("lm",)


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


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every recipe of a run shares, as resolved from the command line."""

    config: str
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    progress: bool = False
    overwrite: bool = False
    recipe_settings: dict = dataclasses.field(default_factory=dict)  # `--set`: {recipe: {option: value}}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSettings:
        return cls(config=args.config, device=args.device, precision=args.precision, seed=args.seed,
                   progress=args.progress, overwrite=args.overwrite, recipe_settings=args.recipe_settings)


# ----------------------------------------------------------------------------- data
def prepare_data(directory: str | None, out: str, budget: Budget, seed: int) -> tuple[str | None, dict]:
    """(folder with train/valid/test.txt for fastvae.data.load_corpus, or None for the built-in corpus;
    a description of what was read). Converted or capped splits go to `<out>/data/`."""
    from fastvae.data.yelp import prepare_corpus  # fastvae (torch) only once a run starts: --help answers at once

    if directory is None:
        return None, {"source": "built-in grammar corpus"}
    return prepare_corpus(directory, os.path.join(out, "data"), seed, budget.max_train, budget.max_eval)


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


def run_recipe(recipe: str, corpus, settings: RunSettings, budget: Budget, out: str, corpus_info: dict) -> dict:
    """Trains and evaluates one recipe through fastvae.Trainer (its run directory: `<out>/<recipe>/`); Ctrl-C,
    SIGTERM or the time limit raise RecipeInterrupted with its last validation figures."""
    from fastvae.training import Trainer

    options = recipe_options(recipe, budget, settings.recipe_settings)
    own_options, epochs = split_epochs(options, recipe, budget.epochs)
    model_config = model_config_for(recipe, own_options, settings.config)
    start = time.perf_counter()
    extra = {"optimizer": budget.optimizer} if budget.optimizer else {}
    trainer = Trainer(None, corpus, recipe=recipe, out_dir=os.path.join(out, recipe), config=model_config,
                      epochs=epochs, iw_samples=budget.iw_samples, device=settings.device, seed=settings.seed,
                      precision=settings.precision, progress=settings.progress, corpus_info=corpus_info,
                      recipe_options=own_options, overwrite=settings.overwrite, **extra)
    try:
        test = trainer.fit()
    except KeyboardInterrupt:
        raise RecipeInterrupted(_partial_result(recipe, options, trainer, start)) from None
    seconds = time.perf_counter() - start
    if recipe != "lm":
        test.update(test_bleu(trainer.model, corpus, settings.seed))
        test.update(semi_supervised(trainer.model, corpus, settings.seed))
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


# ----------------------------------------------------------------------------- outputs
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
@dataclasses.dataclass
class _Alarm:
    reached: bool = False  # set when the time limit went off inside `TimeLimit.armed`


@dataclasses.dataclass(frozen=True)
class TimeLimit:
    """The run's wall-clock limit: a deadline each job's process arms for itself (`armed`); none when `minutes`
    is None. The deadline is `time.time()`, the same instant in every process of the machine."""

    minutes: float | None = None
    deadline: float | None = None

    @classmethod
    def starting_now(cls, minutes: float | None) -> TimeLimit:
        return cls(minutes, time.time() + minutes * 60.0) if minutes else cls()

    @property
    def reason(self) -> str:
        return f"stopped by the {self.minutes:g}-minute time limit"

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    @contextlib.contextmanager
    def armed(self):
        """Within the block, reaching the deadline interrupts it the way Ctrl-C does (so a recipe keeps its partial
        figures); the yielded alarm's `reached` then says it was the limit. Main thread only (SIGALRM)."""
        alarm = _Alarm()
        if self.deadline is None:
            yield alarm
            return

        def reached(signum, frame):
            alarm.reached = True
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, reached)
        signal.setitimer(signal.ITIMER_REAL, max(self.deadline - time.time(), 1e-3))
        try:
            yield alarm
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- jobs: one recipe each
@dataclasses.dataclass(frozen=True)
class RecipeJob:
    """One recipe and everything its process needs; a worker process receives this object as it is."""

    recipe: str
    settings: RunSettings
    budget: Budget
    out: str  # the folder of the recipe's run directory
    data_dir: str | None = None  # train/valid/test.txt (None: the built-in corpus)
    corpus_info: dict = dataclasses.field(default_factory=dict)
    time_limit: TimeLimit = TimeLimit()
    threads: int | None = None  # torch CPU threads (None: torch's choice)
    log: str | None = None  # where a worker's output goes (None: this process's stdout/stderr)


def job_order(recipes: list[str], budget: Budget, settings: dict) -> list[str]:
    """The long recipes start first: aggressive (its inner loop), then those given more epochs, then
    pretrain-fb (two phases)."""
    epochs = {r: split_epochs(recipe_options(r, budget, settings), r, budget.epochs)[1] for r in recipes}
    return sorted(recipes, key=lambda r: (r != "aggressive", -epochs[r], r != "pretrain-fb"))


def plan_jobs(recipes: list[str], settings: RunSettings, budget: Budget, out: str, *, workers: int = 1,
              threads: int | None = None, data_dir: str | None = None, corpus_info: dict | None = None,
              time_limit: TimeLimit = TimeLimit()) -> list[RecipeJob]:
    """The recipes' jobs in the order they start. One at a time, in the recipes' order, each run directory in
    `out`; with several workers the long recipes first, each job in `<out>/jobs/<recipe>/` with its log."""
    common = dict(settings=settings, budget=budget, data_dir=data_dir, corpus_info=corpus_info or {},
                  time_limit=time_limit, threads=threads)
    if workers == 1:
        return [RecipeJob(recipe, out=out, **common) for recipe in recipes]
    folders = {recipe: os.path.join(out, "jobs", recipe) for recipe in recipes}
    return [RecipeJob(recipe, out=folders[recipe], log=os.path.join(folders[recipe], "log.txt"), **common)
            for recipe in job_order(recipes, budget, settings.recipe_settings)]


def _outcome(recipe: str, run: dict | None = None, stopped: str | None = None, vocab_size: int | None = None) -> dict:
    return {"recipe": recipe, "run": run, "stopped": stopped, "vocab_size": vocab_size}


def run_job(job: RecipeJob, corpus=None) -> dict:
    """Runs one recipe in this process: {"recipe", "run": its result (the partial one when stopped, or None),
    "stopped": None or why (the time limit, a signal), "vocab_size"}. `corpus`: already loaded (else read
    here). An error in the recipe is raised."""
    if job.log:
        _send_output_to(job.log)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    vocab_size = None
    # SIGTERM (a worker's stop, or `timeout`) stops the recipe as Ctrl-C does: the trainer keeps its last step
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with job.time_limit.armed() as alarm:
            try:
                corpus = corpus if corpus is not None else load_data(job.data_dir, job.budget)
                vocab_size = len(corpus.vocab)
                run = run_recipe(job.recipe, corpus, job.settings, job.budget, job.out, job.corpus_info)
                return _outcome(job.recipe, run, vocab_size=vocab_size)
            except (KeyboardInterrupt, RecipeInterrupted) as exc:
                return _outcome(job.recipe, exc.result if isinstance(exc, RecipeInterrupted) else None,
                                job.time_limit.reason if alarm.reached else "interrupted", vocab_size)
    except Exception:
        if job.log:  # the worker's log says why; the main process reports it too
            traceback.print_exc()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _send_output_to(path: str) -> None:
    """A worker's stdout and stderr, Python's and the C++ extension's, go to its log, line by line (the log
    follows the run). The worker process ends with its job, so nothing is restored."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _start_worker() -> None:
    """A worker process's start: its own session, so a Ctrl-C or `timeout` aimed at the run's process group
    reaches only the main process, which then stops each running job once (a second signal would cut a job's
    partial-result write short). It starts with those signals blocked (see `run_jobs`): ignoring them drops any
    that came while it started; `run_job` turns SIGTERM into a stop while a recipe runs."""
    os.setsid()
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _run_here(job: RecipeJob, corpus) -> Future:
    """One job at a time runs in this process, the corpus read once for all of them."""
    future = Future()
    try:
        future.set_result(run_job(job, corpus))
    except BaseException as exc:  # as a worker process reports it
        future.set_exception(exc)
    return future


def _run_in_new_process(job: RecipeJob) -> tuple[Future, ProcessPoolExecutor]:
    """The job in a fresh interpreter of its own (spawn: its own torch threads and alarm): a pool of one worker
    that ends with this one job (`max_tasks_per_child` would need Python 3.11, and leave idle workers)."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker)
    # the worker is spawned now and inherits these signals blocked, until it has its own session
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        future = pool.submit(run_job, job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    pool.shutdown(wait=False)  # no further jobs: the worker exits after this one
    return future, pool


@dataclasses.dataclass
class _StopRequest:
    signum: int | None = None
    forwarded: bool = False


@contextlib.contextmanager
def _stop_requests(process_pool: bool):
    """With worker processes, SIGINT/SIGTERM only note the request (the loop stops the workers once) and the
    usual handlers come back for a second signal. Jobs run here meet the signals themselves."""
    request = _StopRequest()
    if not process_pool:
        yield request
        return

    def note(signum, frame):
        request.signum = signum
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    previous = {sig: signal.signal(sig, note) for sig in _STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_jobs(jobs: list[RecipeJob], workers: int, on_done: Callable[[RecipeJob, dict | BaseException], None],
             corpus=None) -> tuple[list[str], str | None]:
    """Runs the jobs, `workers` at a time, each in its own process (one at a time: in this process, sharing
    `corpus`), and calls `on_done(job, outcome)` as each ends (`run_job`'s dict, or the exception of a job that
    failed). Once a job stops (time limit, Ctrl-C, SIGTERM) or the deadline passes, no further job starts.
    Returns (the recipes not started, why not)."""
    pending, running = list(jobs), {}
    why_not = None
    time_limit = jobs[0].time_limit if jobs else TimeLimit()
    with _stop_requests(process_pool=workers > 1) as request:
        try:
            while pending or running:
                if why_not is None and time_limit.expired():
                    why_not = time_limit.reason
                if request.signum is not None and not request.forwarded:
                    why_not = why_not or "interrupted"
                    for worker in multiprocessing.active_children():  # SIGTERM: a job stops after its step
                        worker.terminate()
                    request.forwarded = True
                while pending and len(running) < workers and why_not is None:
                    job = pending.pop(0)
                    if workers == 1:
                        print(f"\n=== {job.recipe} ({len(jobs) - len(pending)}/{len(jobs)}) ===", flush=True)
                        running[_run_here(job, corpus)] = (job, None)
                    else:
                        print(f"started {job.recipe} ({job.threads} thread{'s' if job.threads > 1 else ''}; "
                              f"log {job.log})", flush=True)
                        future, pool = _run_in_new_process(job)
                        running[future] = (job, pool)
                if not running:
                    break
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    job, pool = running.pop(future)
                    if pool is not None:
                        pool.shutdown()  # its worker has ended or is ending: reap it
                    outcome = future.exception() or future.result()
                    if isinstance(outcome, KeyboardInterrupt):  # came as the job was ending: no figures
                        outcome = _outcome(job.recipe, stopped="interrupted")
                    if isinstance(outcome, dict) and outcome["stopped"]:
                        why_not = why_not or outcome["stopped"]
                    on_done(job, outcome)
        except KeyboardInterrupt:  # a stop between two recipes, or a second signal: wait no longer
            why_not = why_not or "interrupted"
            for job, _ in running.values():
                on_done(job, _outcome(job.recipe, stopped="interrupted"))
    return [job.recipe for job in pending], why_not


# ----------------------------------------------------------------------------- main
def run_status(recipes: list[str], outcomes: dict, failures: dict, not_run: list[str], why_not: str | None) -> str:
    """'finished', or what stopped or failed: "<why> during <recipe> (<its partial figures>); <recipe> failed (...);
    not run: <recipes>"."""
    parts = []
    stopped = [r for r in recipes if r in outcomes and outcomes[r]["stopped"]]
    for reason in dict.fromkeys(outcomes[r]["stopped"] for r in stopped):
        during = [r + (f" ({outcomes[r]['run']['partial_note']})" if outcomes[r]["run"] else "")
                  for r in stopped if outcomes[r]["stopped"] == reason]
        parts.append(f"{reason} during {', '.join(during)}")
    if not_run and not stopped and why_not:
        parts.append(why_not)
    parts += [f"{recipe} failed ({failures[recipe]})" for recipe in recipes if recipe in failures]
    if not_run:
        parts.append(f"not run: {', '.join(r for r in recipes if r in not_run)}")
    return "; ".join(parts) or "finished"


def main(argv=None) -> int:
    args, budget, recipes, published, out = resolve_args(argv)
    time_limit = TimeLimit.starting_now(args.time_limit)
    workers = args.jobs if len(recipes) > 1 else 1
    os.makedirs(out, exist_ok=True)
    data_dir, data_info = prepare_data(args.data, out, budget, args.seed)
    corpus_info = {"data": os.path.abspath(data_dir)} if data_dir else {"builtin": "grammar"}
    if budget.max_vocab and data_dir:
        corpus_info["max_vocab"] = budget.max_vocab
    # one at a time the recipes share this process and its corpus; workers read their own
    corpus = load_data(data_dir, budget) if workers == 1 else None
    threads = args.threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)
    jobs = plan_jobs(recipes, RunSettings.from_args(args), budget, out, workers=workers, threads=threads,
                     data_dir=data_dir, corpus_info=corpus_info, time_limit=time_limit)
    command = "python benchmarks/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"command": command, "config": args.config, "precision": args.precision,
               "budget": dataclasses.asdict(budget), "recipes": recipes,
               "published": published, "data": data_info, "device": args.device, "seed": args.seed,
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "load_average_start": list(os.getloadavg()),
               "vocab_size": len(corpus.vocab) if corpus is not None else None, "jobs": workers,
               "threads": threads or _torch_threads(), "runs": []}
    print(f"reproduce: config {args.config}, recipes {', '.join(recipes)}"
          + (f" in {workers} jobs" if workers > 1 else "") + f", budget {budget}, data {data_info}"
          + (f", vocabulary {len(corpus.vocab)}" if corpus is not None else "") + f", out {out}", flush=True)
    outcomes, failures = {}, {}

    def table(status: str) -> str:
        payload["runs"] = [outcomes[r]["run"] for r in recipes if r in outcomes and outcomes[r]["run"]]
        return render_table(payload["runs"], config=args.config, published=published, budget=budget,
                            data_info=data_info, device=args.device, iw_samples=budget.iw_samples, status=status)

    def on_done(job: RecipeJob, outcome) -> None:
        if isinstance(outcome, BaseException):
            print(f"{job.recipe} failed:", file=sys.stderr)
            traceback.print_exception(type(outcome), outcome, outcome.__traceback__)
            failures[job.recipe] = f"{type(outcome).__name__}: {outcome}" + (f"; see {job.log}" if job.log else "")
        else:
            outcomes[job.recipe] = outcome
            if payload["vocab_size"] is None:
                payload["vocab_size"] = outcome["vocab_size"]
        if job.log:
            print(f"finished {job.recipe} ({'failed' if job.recipe in failures else outcome['stopped'] or 'ok'})",
                  flush=True)
        ended = len(outcomes) + len(failures)
        payload["load_average_now"] = list(os.getloadavg())
        write_outputs(out, table(f"running ({ended}/{len(recipes)} recipes done)"), payload, args.table)

    start = time.perf_counter()
    not_run, why_not = run_jobs(jobs, workers, on_done, corpus)
    payload["wall_seconds"] = time.perf_counter() - start
    payload["load_average_now"] = list(os.getloadavg())
    payload["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    payload["status"] = run_status(recipes, outcomes, failures, not_run, why_not)
    how = (f"; {workers} recipes at a time, {threads} thread(s) each, {payload['wall_seconds'] / 60:.1f} min wall "
           f"clock in all") if workers > 1 else ""
    text = table(payload["status"] + how)
    write_outputs(out, text, payload, args.table)
    print("\n" + text, flush=True)
    return 0 if payload["status"] == "finished" else 1


if __name__ == "__main__":
    # SIGTERM (e.g. `timeout`) stops like Ctrl-C: the table keeps what finished, and the interrupted
    # recipe's last validation metrics, marked partial
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
