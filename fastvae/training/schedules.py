"""KL-weight and learning-rate schedules: pure functions of the global training step.

A schedule is bound once to the real length of training (`bind(steps_per_epoch, epochs)`)
and then maps a 0-based global step to a value. Holding no mutable state makes them exact to
resume: the trainer stores only the step.

Semantics (../shared/docs/recipes.md):

- `LinearAnnealing(start, warm_up)`: the reference's per-step increment
  `(end - start) / (warm_up * batches_per_epoch)` added *before* each step, so step s (0-based)
  uses `min(end, start + (s + 1) * increment)`. The reference derives batches_per_epoch from the
  nominal N / batch_size; fastvae uses the actual number of batches of an epoch. `warm_up=0`: no
  ramp, the weight stays at `start` (as Li et al.'s code keeps `kl_start`; the recipes make a lone
  `warm_up=0` mean weight 1, no annealing).
- `CyclicalSchedule` (Fu et al. 2019, paper form): T total steps in M cycles of length T/M;
  tau = (s mod (T/M)) / (T/M); beta = start + (stop - start) * ramp(tau / R) while tau < R, then stop.
  Cycle c starts at step int(c * T/M), as in the blog's `frange_cycle_linear`, which this equals. Ramps: `linear` x,
  `sigmoid` 1/(1+exp(-(12x-6))) and `cosine` 0.5-0.5cos(pi x) (the blog's untested shapes).
  The paper's PTB-script variant: cycle length in epochs (`cycle_epochs`), start value 0.1,
  and a cosine learning-rate restart each cycle (`CosineRestartLR`).
"""
from __future__ import annotations

import abc
import math

RAMPS = ("linear", "sigmoid", "cosine")


def _ramp(shape: str, x: float) -> float:
    if shape == "linear":
        return x
    if shape == "sigmoid":
        return 1.0 / (1.0 + math.exp(-(12.0 * x - 6.0)))
    if shape == "cosine":
        return 0.5 - 0.5 * math.cos(math.pi * x)
    raise ValueError(f"unknown ramp shape {shape!r}: expected one of {', '.join(RAMPS)}")


def _check_number(name: str, value, low=None, high=None, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return float(value)


class Schedule(abc.ABC):
    """Base: maps a 0-based global step to a value once bound to the length of training."""

    steps_per_epoch: int | None = None
    epochs: int | None = None

    def bind(self, steps_per_epoch: int, epochs: int) -> "Schedule":
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        return self

    @property
    def total_steps(self) -> int:
        self._require_bound()
        return self.steps_per_epoch * self.epochs

    def _require_bound(self):
        if self.steps_per_epoch is None:
            raise RuntimeError(f"{type(self).__name__} is not bound: call bind(steps_per_epoch, epochs) first")

    @abc.abstractmethod
    def __call__(self, step: int) -> float:
        """The value at 0-based global step `step`."""

    def describe(self) -> dict:
        return {"name": type(self).__name__}


class ConstantSchedule(Schedule):
    def __init__(self, value: float = 1.0):
        self.value = _check_number("constant KL weight", value, low=0.0)

    def __call__(self, step: int) -> float:
        return self.value

    def describe(self) -> dict:
        return {"name": "constant", "value": self.value}


class LinearAnnealing(Schedule):
    """Linear from `start` to `end` over `warm_up` epochs (float allowed), the reference's form."""

    def __init__(self, start: float = 0.1, warm_up: float = 10.0, end: float = 1.0):
        self.start = _check_number("kl_start", start, low=0.0)
        self.end = _check_number("KL weight end value", end, low=0.0)
        self.warm_up = _check_number("warm_up (epochs)", warm_up, low=0.0)
        if self.start > self.end:
            raise ValueError(f"kl_start ({start}) must not exceed the final KL weight ({end})")

    @property
    def increment(self) -> float:
        self._require_bound()
        if self.warm_up == 0:
            return math.inf
        return (self.end - self.start) / (self.warm_up * self.steps_per_epoch)

    def __call__(self, step: int) -> float:
        inc = self.increment
        if inc == math.inf:  # no warm-up: the start value throughout
            return self.start
        return min(self.end, self.start + (step + 1) * inc)

    def describe(self) -> dict:
        return {"name": "linear", "start": self.start, "end": self.end, "warm_up_epochs": self.warm_up}


class CyclicalSchedule(Schedule):
    """Fu et al. (2019): M cycles over training, ramp over the first fraction R of each cycle.

    `cycle_epochs` (PTB-script variant) fixes the cycle length in epochs instead of M cycles.
    """

    def __init__(self, cycles: int = 4, ratio: float = 0.5, ramp: str = "linear", start: float = 0.0,
                 stop: float = 1.0, cycle_epochs: float | None = None):
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles (M) must be a positive int, got {cycles!r}")
        self.cycles = cycles
        self.ratio = _check_number("ratio (R)", ratio, low=0.0, high=1.0, low_open=True)
        if ramp not in RAMPS:
            raise ValueError(f"unknown ramp shape {ramp!r}: expected one of {', '.join(RAMPS)}")
        self.ramp = ramp
        self.start = _check_number("cyclical start value", start, low=0.0)
        self.stop = _check_number("cyclical stop value", stop, low=0.0)
        if self.start > self.stop:
            raise ValueError(f"cyclical start value ({start}) must not exceed the stop value ({stop})")
        self.cycle_epochs = None if cycle_epochs is None else _check_number(
            "cycle_epochs", cycle_epochs, low=0.0, low_open=True)

    @property
    def period(self) -> float:
        """Cycle length in steps (T/M, or cycle_epochs x steps per epoch)."""
        self._require_bound()
        if self.cycle_epochs is not None:
            return self.cycle_epochs * self.steps_per_epoch
        return self.total_steps / self.cycles

    def cycle_index(self, step: int) -> int:
        """Cycle c holds steps int(c * period) .. int((c + 1) * period) - 1 (the blog's rounding)."""
        period = self.period
        c = int(math.floor(step / period))
        while int((c + 1) * period) <= step:
            c += 1
        while c > 0 and int(c * period) > step:
            c -= 1
        return c

    def position(self, step: int) -> float:
        """tau in [0, 1): the fraction of the current cycle already done."""
        period = self.period
        return (step - int(self.cycle_index(step) * period)) / period

    def __call__(self, step: int) -> float:
        x = self.position(step) / self.ratio
        if x >= 1.0:  # the plateau is exactly `stop` for every shape (sigmoid(6) is not 1)
            return self.stop
        return self.start + (self.stop - self.start) * _ramp(self.ramp, x)

    def describe(self) -> dict:
        return {"name": "cyclical", "cycles": self.cycles, "ratio": self.ratio, "ramp": self.ramp,
                "start": self.start, "stop": self.stop, "cycle_epochs": self.cycle_epochs}


class CosineRestartLR:
    """Learning-rate factor restarting with every KL cycle (the cyclical PTB script's variant).

    factor(step) = 0.5 * (1 + cos(pi * tau)), tau = position in the current cycle, so the learning
    rate falls from its base value towards 0 within a cycle and jumps back at each restart.
    """

    def __init__(self, cycle: CyclicalSchedule, *, per_epoch: bool = False):
        self.cycle = cycle
        self.per_epoch = per_epoch  # Fu et al.'s script sets the rate once, at each epoch's start

    def __call__(self, step: int) -> float:
        if self.per_epoch:
            spe = self.cycle.steps_per_epoch
            step = (step // spe) * spe
        return 0.5 * (1.0 + math.cos(math.pi * self.cycle.position(step)))
