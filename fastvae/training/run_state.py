"""Where a run stands, as one object: saved into a checkpoint and restored from it as a whole.

`RunProgress` holds the run's position (phase, epoch, batch, steps), its best epoch so far, its records and why
its current phase stopped. The Trainer reads and writes these as its own attributes (`trainer.epoch` is
`trainer.progress.epoch`), and a checkpoint's "trainer" entry is `progress.state_dict()` plus the states of the
objects that keep their own (plateau, encoder-update policy, running epoch sums). A field added here is saved
and restored with no other change; an older checkpoint without it gets it in a migration (checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class RunProgress:
    phase_index: int = 0
    epoch: int = 0  # epoch within the current phase (0-based)
    position: int = 0  # next batch index within the epoch
    step: int = 0  # optimiser steps within the current phase (drives the KL schedule)
    global_step: int = 0
    best_value: float = math.inf
    best_epoch: int | None = None
    history: list = field(default_factory=list)  # one record per epoch (and phase summaries)
    stopped_reason: str | None = None  # why the current phase stopped early; None while it runs

    @classmethod
    def field_names(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    def state_dict(self) -> dict:
        state = dataclasses.asdict(self)
        state["history"] = list(self.history)
        return state

    def load_state_dict(self, state: dict) -> None:
        missing = [name for name in self.field_names() if name not in state]
        if missing:
            raise ValueError(f"the checkpoint's training state lacks {', '.join(missing)}: it was written by an "
                             f"incompatible fastvae, or edited")
        for name in self.field_names():
            setattr(self, name, list(state[name]) if name == "history" else state[name])


class ProgressField:
    """A Trainer attribute that lives in its RunProgress, so there is one copy of each to save and restore."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, trainer, owner=None):
        return self if trainer is None else getattr(trainer.progress, self.name)

    def __set__(self, trainer, value):
        setattr(trainer.progress, self.name, value)
