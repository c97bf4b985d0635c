"""Recipes: named compositions of a KL-weight schedule, a KL objective, an encoder-update policy
and phases. Semantics: ../shared/docs/recipes.md.

| recipe | phases | KL weight | KL objective | policy |
|---|---|---|---|---|
| `lm` | train | - | - (LSTM language model) | joint |
| `vae` | train | 1, or linear annealing (kl_start, warm_up) | plain | joint |
| `beta` | train (selected by rec + beta x KL, patience 5: Li et al.'s text_beta.py) | beta x (1, or linear annealing) | plain | joint |
| `cyclical` | train | cyclical (M cycles, ratio R, ramp; or cycle_epochs) | plain | joint |
| `aggressive` | train | linear annealing 0.1 -> 1 over 10 epochs | plain | aggressive (He et al.) |
| `pretrain-fb` | pretrain (beta=0, selected by rec), fb (decoder re-initialised, encoder kept, new optimisers, 0 -> 1 over 10 epochs, selected by the true ELBO) | | free bits `dim`, target 8 | joint |

Natural combinations are options: every VAE recipe takes `fb_mode`/`target_kl` (free bits) and
`aggressive=True` (He et al.'s encoder policy), for example `cyclical` with free bits.
`aggressive_epochs=N` caps the aggressive phase at N epochs when the MI stop has not fired by then (a
budget option for reduced runs; unset, the reference: the MI stop alone).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..options import option, validate
from .objectives import FREE_BITS_MODES, KLObjective
from .policies import AggressiveUpdate, JointUpdate
from .schedules import RAMPS, ConstantSchedule, CyclicalSchedule, LinearAnnealing, Schedule

RECIPE_NAMES = ("lm", "vae", "beta", "cyclical", "aggressive", "pretrain-fb")

CYCLICAL_VARIANTS = {
    # Fu et al.'s paper form
    "paper": {"cycles": 4, "ratio": 0.5, "kl_start": 0.0, "cycle_epochs": None, "lr_restart": "none"},
    # the paper's own PTB script: 10-epoch cycles, beta restarts at 0.1 and reaches 1 after 4.5
    # epochs, Adam 1e-3 with a cosine learning-rate restart each cycle
    # (set once per epoch, as the script does), over the script's 40 epochs
    "ptb-script": {"cycles": 4, "ratio": 0.45, "kl_start": 0.1, "cycle_epochs": 10.0, "lr_restart": "cosine-epoch"},
}
# "cosine": the factor follows the cycle position at every step; "cosine-epoch": once per epoch (Fu et al.'s script)
LR_RESTARTS = ("none", "cosine", "cosine-epoch")


@dataclass
class RecipeOptions:
    """Every recipe option, declared once: its help, kind and bounds. The command line's recipe flags and the
    checks of given values (`resolve_options`) come from here; which recipes take an option and with what
    default is RECIPE_OPTIONS below (None there: resolved by `resolve_options`). Fields left None were not given."""

    kl_start: float | None = option(None, "annealing start weight (vae/beta/aggressive/pretrain-fb); cyclical: each "
                                    "cycle's start value", kind=float, minimum=0,
                                    unset="vae/beta 1, or 0.1 with --warm-up; aggressive 0.1; pretrain-fb 0; "
                                          "cyclical the variant's")
    warm_up: float | None = option(None, "annealing length in epochs (0: no ramp; the weight is --kl-start "
                                   "throughout, 1 when --kl-start is not given)", kind=float, minimum=0,
                                   unset="vae/beta none, or 10 with --kl-start; aggressive and pretrain-fb 10")
    beta: float | None = option(None, "beta recipe: weight of the KL term", kind=float, minimum=0, unset="0.4")
    variant: str | None = option(None, "cyclical: paper or ptb-script", kind=str, choices=CYCLICAL_VARIANTS,
                                 unset="paper", label="cyclical variant")
    cycles: int | None = option(None, "cyclical: number of cycles M", kind=int, minimum=1, unset="4")
    ratio: float | None = option(None, "cyclical: fraction R of a cycle spent ramping", kind=float, minimum=0,
                                 exclusive=True, unset="the variant's: 0.5, ptb-script 0.45")
    ramp: str | None = option(None, "cyclical: ramp shape", kind=str, choices=RAMPS, unset="linear",
                              label="ramp shape")
    cycle_epochs: float | None = option(None, "cyclical: cycle length in epochs instead of M cycles", kind=float,
                                        minimum=0, exclusive=True, unset="M cycles over the run; ptb-script 10")
    lr_restart: str | None = option(None, "cyclical: cosine learning-rate restart per cycle, its factor updated "
                                    "every step (cosine) or once per epoch (cosine-epoch)", kind=str,
                                    choices=LR_RESTARTS, unset="none; ptb-script cosine-epoch", label="lr restart")
    fb_mode: str | None = option(None, "free-bits mode", kind=str, choices=FREE_BITS_MODES,
                                 unset="none; pretrain-fb dim", label="free-bits mode")
    target_kl: float | None = option(None, "free-bits target lambda, nats per sentence", kind=float, minimum=0,
                                     unset="pretrain-fb 8")
    aggressive: bool | None = option(None, "He et al.'s aggressive encoder updates on top of the recipe", kind=bool,
                                     switch=True, unset="on for the aggressive recipe")
    max_inner_steps: int | None = option(None, "aggressive: encoder sub-steps cap", kind=int, minimum=1,
                                         unset="100")
    inner_window: int | None = option(None, "aggressive: stop-rule window", kind=int, minimum=1, unset="15")
    aggressive_epochs: int | None = option(None, "aggressive: switch it off after N epochs if the MI stop has not "
                                           "(a budget cap)", kind=int, minimum=1,
                                           unset="the MI stop alone, as He et al.")
    pretrain_epochs: int | None = option(None, "pretrain-fb: epochs of the AE phase", kind=int, minimum=1,
                                         unset="the run's epochs")
    reset_decoder: bool | None = option(None, "pretrain-fb: re-initialise the decoder when the fb phase starts "
                                        "(Li et al.); off keeps the decoder the AE phase trained",
                                        kind=bool, unset="on; off for a model whose decoder is pretrained "
                                                         "(decoder_is_pretrained, e.g. fastvae.hf)")


RECIPE_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RecipeOptions))

_VAE_COMMON = {"fb_mode": "none", "target_kl": None, "aggressive": False, "max_inner_steps": 100,
               "inner_window": 15, "aggressive_epochs": None}
_ANNEAL = {"kl_start": None, "warm_up": None}

# option -> default, per recipe (None: "not set", resolved in build_recipe)
RECIPE_OPTIONS = {
    "lm": {},
    "vae": {**_ANNEAL, **_VAE_COMMON},
    "beta": {"beta": 0.4, **_ANNEAL, **_VAE_COMMON},
    "cyclical": {"variant": "paper", "cycles": None, "ratio": None, "ramp": "linear", "kl_start": None,
                 "cycle_epochs": None, "lr_restart": None, **_VAE_COMMON},
    "aggressive": {"kl_start": 0.1, "warm_up": 10.0, **_VAE_COMMON, "aggressive": True},
    "pretrain-fb": {"kl_start": 0.0, "warm_up": 10.0, **_VAE_COMMON, "fb_mode": "dim", "target_kl": 8.0,
                    "pretrain_epochs": None, "reset_decoder": None},
}
# a table key that is not a declared option would be an option without help or bounds
assert set().union(*RECIPE_OPTIONS.values()) <= set(RECIPE_OPTION_NAMES)

# training-option defaults a recipe implies (the user's explicit values win)
TRAIN_DEFAULTS = {
    "lm": {"lr": 1.0, "patience": 2},
    "vae": {"lr": 1.0, "patience": 2},
    "beta": {"lr": 1.0, "patience": 5},  # Li et al.'s text_beta.py (decay_epoch = 5)
    "cyclical": {"lr": 1.0, "patience": 2},
    "aggressive": {"lr": 1.0, "patience": 2},
    "pretrain-fb": {"lr": 0.5, "patience": 5},
}


@dataclass
class Phase:
    """One stretch of training with its own schedule, objective, policy, optimisers and selection."""

    name: str
    schedule: Schedule
    objective: KLObjective | None  # None: language model (no latent)
    policy: object
    select_by: str  # "elbo" (rec + unmasked kl), "beta-loss" (rec + beta x kl), "rec", or "nll" (language model)
    # re-initialise every decoder parameter when the phase starts; None: the model's default, decided by the
    # Trainer once the model is known (fastvae.models.protocol.resolve_reset_decoder)
    reset_decoder: bool | None = False
    epochs: int | None = None  # None: the trainer's `epochs`
    lr_restart: str = "none"  # "cosine"/"cosine-epoch": learning rate restarts with each KL cycle (LR_RESTARTS)

    def describe(self) -> dict:
        return {"name": self.name, "schedule": self.schedule.describe(),
                "objective": None if self.objective is None else self.objective.describe(),
                "policy": self.policy.describe(), "select_by": self.select_by,
                "reset_decoder": self.reset_decoder, "epochs": self.epochs, "lr_restart": self.lr_restart}


@dataclass
class Recipe:
    name: str
    model_kind: str  # "vae" or "lm"
    phases: list
    options: dict  # every option, resolved
    train_defaults: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "model_kind": self.model_kind, "options": self.options,
                "phases": [p.describe() for p in self.phases]}


def _fail_unknown(recipe: str, unknown) -> None:
    allowed = sorted(RECIPE_OPTIONS[recipe])
    applies = {opt: [r for r, opts in RECIPE_OPTIONS.items() if opt in opts] for opt in unknown}
    parts = []
    for opt, recipes in applies.items():
        where = f"it applies to: {', '.join(recipes)}" if recipes else "no recipe has it"
        parts.append(f"{opt!r} ({where})")
    raise ValueError(f"option(s) {', '.join(parts)} do not apply to recipe {recipe!r}; "
                     f"its options are: {', '.join(allowed) if allowed else 'none'}")


def resolve_options(recipe: str, options: dict | None = None) -> dict:
    """The recipe's options with defaults filled in; clear errors for unknown or conflicting ones."""
    if recipe not in RECIPE_OPTIONS:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPE_NAMES)}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = [k for k in given if k not in RECIPE_OPTIONS[recipe]]
    if unknown:
        _fail_unknown(recipe, unknown)
    validate(RecipeOptions(**given))  # kinds, bounds and choices, as declared
    resolved = {**RECIPE_OPTIONS[recipe], **given}
    if "warm_up" in resolved and given.get("warm_up") == 0 and "kl_start" not in given:
        resolved["kl_start"] = 1.0  # warm_up=0 alone: no annealing (with a kl_start too: that weight, constant)

    if recipe in ("vae", "beta"):
        # annealing is optional: giving either value turns it on with He et al.'s other value
        if resolved["kl_start"] is None and resolved["warm_up"] is None:
            resolved["kl_start"], resolved["warm_up"] = 1.0, 0.0
        else:
            resolved["kl_start"] = 0.1 if resolved["kl_start"] is None else resolved["kl_start"]
            resolved["warm_up"] = 10.0 if resolved["warm_up"] is None else resolved["warm_up"]
    if recipe == "cyclical":
        variant = dict(CYCLICAL_VARIANTS[resolved["variant"]])
        if "cycles" in given:  # M cycles asked for explicitly: the cycle length follows from it
            variant["cycle_epochs"] = None
        for key, value in variant.items():
            if resolved[key] is None:
                resolved[key] = value
        if "cycles" in given and "cycle_epochs" in given:
            raise ValueError("conflicting options: give the number of cycles (cycles) or the cycle length "
                             "in epochs (cycle_epochs), not both")
    if recipe != "lm":
        if resolved["fb_mode"] == "none" and resolved["target_kl"] is not None:
            raise ValueError(f"conflicting options: target_kl={resolved['target_kl']} is given but fb_mode is "
                             f"'none'; choose a free-bits mode ({', '.join(FREE_BITS_MODES[1:])})")
        if resolved["fb_mode"] != "none" and resolved["target_kl"] is None:
            raise ValueError(f"free-bits mode {resolved['fb_mode']!r} needs target_kl (nats per sentence)")
        if resolved["target_kl"] is None:
            resolved["target_kl"] = 0.0
        if not resolved["aggressive"] and any(k in given for k in ("max_inner_steps", "inner_window",
                                                                   "aggressive_epochs")):
            raise ValueError("max_inner_steps/inner_window/aggressive_epochs configure the aggressive policy: "
                             "add aggressive=True "
                             "(--aggressive) or use the 'aggressive' recipe")
        if recipe == "aggressive" and given.get("aggressive") is False:
            raise ValueError("recipe 'aggressive' cannot run with aggressive=False; use recipe 'vae' with "
                             "kl_start/warm_up for the same model without the aggressive policy")
    return resolved


def _policy(opts: dict):
    if opts.get("aggressive"):
        return AggressiveUpdate(max_inner_steps=int(opts["max_inner_steps"]), window=int(opts["inner_window"]),
                                max_epochs=opts["aggressive_epochs"])
    return JointUpdate()


def build_recipe(name: str, options: dict | None = None) -> Recipe:
    """Builds the named recipe's phases from its options (see the module table)."""
    opts = resolve_options(name, options)
    train_defaults = dict(TRAIN_DEFAULTS[name])
    if name == "lm":
        phases = [Phase("train", ConstantSchedule(0.0), None, JointUpdate(), select_by="nll")]
        return Recipe(name, "lm", phases, opts, train_defaults)

    objective = KLObjective(opts["fb_mode"], float(opts["target_kl"]))
    if name in ("vae", "beta", "aggressive"):
        schedule = LinearAnnealing(opts["kl_start"], opts["warm_up"])
        if name == "beta":
            objective.scale = float(opts["beta"])
            objective.__post_init__()
        # beta: selection and decay-on-plateau on the objective it trains, rec + beta x KL (Li et al.'s
        # text_beta.py); the others on the true ELBO
        phases = [Phase("train", schedule, objective, _policy(opts),
                        select_by="beta-loss" if name == "beta" else "elbo")]
    elif name == "cyclical":
        schedule = CyclicalSchedule(cycles=opts["cycles"], ratio=opts["ratio"], ramp=opts["ramp"],
                                    start=opts["kl_start"], cycle_epochs=opts["cycle_epochs"])
        phases = [Phase("train", schedule, objective, _policy(opts), select_by="elbo",
                        lr_restart=opts["lr_restart"])]
        if opts["variant"] == "ptb-script":
            # the script's learning-rate schedule is the cosine restart alone: no decay-on-plateau (which
            # would also reload the best checkpoint, a low-KL one from a weight-1 stretch); its 40 epochs
            train_defaults.update({"optimizer": "adam", "lr": 1e-3, "plateau_decay": False, "epochs": 40})
    elif name == "pretrain-fb":
        pretrain = Phase("pretrain", ConstantSchedule(0.0), KLObjective(), _policy(opts), select_by="rec",
                         epochs=opts["pretrain_epochs"])
        anneal = Phase("fb", LinearAnnealing(opts["kl_start"], opts["warm_up"]), objective, _policy(opts),
                       select_by="elbo", reset_decoder=opts["reset_decoder"])
        phases = [pretrain, anneal]
    else:  # resolve_options has rejected every other name
        raise AssertionError(name)
    return Recipe(name, "vae", phases, opts, train_defaults)
