"""The training step as values: what one loss computation produced, and what an encoder-update policy is.

A policy (JointUpdate, AggressiveUpdate) drives each outer step through the trainer:
    result = trainer.compute_loss(batch, kl_weight)        # a StepResult: nothing is left on the trainer
    trainer.backward_and_step(result, step_encoder=..., step_decoder=..., clip_params=...)
so two loss computations before one update can never mix batches, and whatever a step computes (the
fused loss, low-precision weights, another model) reaches the update through this one object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class StepResult:
    """One loss computation on this rank's rows of a global batch.

    loss: the scalar to minimise (the mean over this rank's rows). stats: detached device sums over those rows
    (`loss_sum`, `rec_sum`, `kl_sum`, `words`) plus `sentences`, the global batch's rows (a host int);
    `backward_and_step` turns the device sums into the global batch's under torchrun (in place).
    local_rows / global_rows: the rows of this rank and of the global batch (the gradient all-reduce weights)."""

    loss: torch.Tensor
    stats: dict
    local_rows: int
    global_rows: int


@runtime_checkable
class EncoderUpdatePolicy(Protocol):
    """Which optimiser steps on which loss, per outer batch; the trainer never asks which policy it has."""

    name: str

    def step(self, trainer, batch, kl_weight: float) -> dict:
        """One outer training step; returns the stats of the step that updated the decoder."""

    def start_epoch(self) -> None:
        """Called before the first step of an epoch (not again when resuming inside it)."""

    def epoch_fields(self) -> dict:
        """Extra fields of this epoch's metrics.jsonl records (called before end_of_epoch)."""

    def epoch_summary(self, steps_done: int) -> str | None:
        """A fragment of the epoch's log line, or None."""

    def end_of_epoch(self, trainer, valid_metrics: dict) -> str | None:
        """The policy's own end-of-epoch decision; returns a message to print, or None."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def describe(self) -> dict: ...
