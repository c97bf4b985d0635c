"""Encoder-update policies: which optimiser steps on which loss, per outer training batch.

Each implements `fastvae.training.step.EncoderUpdatePolicy` and talks to the trainer through three methods:
  `trainer.compute_loss(batch, kl_weight)` -> a `StepResult` (loss, detached device stats, rows)
  `trainer.backward_and_step(result, step_encoder, step_decoder, clip_params)`
  `trainer.random_train_batch()` -> a training batch drawn uniformly with replacement
"""
from __future__ import annotations

import contextlib


class JointUpdate:
    """Plain VAE (and LM): one loss, both networks step together."""

    name = "joint"
    active = False

    def step(self, trainer, batch, kl_weight: float) -> dict:
        result = trainer.compute_loss(batch, kl_weight)
        trainer.backward_and_step(result, step_encoder=True, step_decoder=True)
        return result.stats

    def start_epoch(self) -> None:
        return None

    def epoch_fields(self) -> dict:
        return {}

    def epoch_summary(self, steps_done: int) -> str | None:
        return None

    def end_of_epoch(self, trainer, valid_metrics: dict) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def describe(self) -> dict:
        return {"name": self.name}


@contextlib.contextmanager
def frozen(params):
    """Temporarily sets requires_grad=False (backward then skips these weights' gradients)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class AggressiveUpdate:
    """He et al. (2019): encoder-only inner loop, then one decoder step, while aggressive mode is on.

    Inner loop (at most `max_inner_steps` sub-iterations; the reference's `while sub_iter < 100`
    runs 99, recipes.md states 100): loss at the current KL weight on the outer batch first, then
    on random training batches (uniform, with replacement); backward, clip, step only the encoder.
    Loss and target-word counts accumulate (on the device); every `window` sub-iterations the mean
    loss per word is compared with the previous window's (initially 1e4) and the loop stops if it
    went up. The decoder's weights are frozen (requires_grad=False) during these sub-steps, so
    backward computes only the path to z: the reference computes the decoder's gradients and
    discards them. Consequence: the clip norm covers the encoder's gradients only (the reference
    clips over all parameters, decoder gradients included).
    Then the loss on the outer batch is recomputed and only the decoder steps (gradients and clip
    over all parameters, as in the reference).
    At each epoch end, while on: mutual information on the validation set (the per-batch estimator,
    He et al.'s calc_mi, over the split's reference batches of `TrainConfig.mi_batch_size`, 32); if it
    decreased versus the previous epoch (initially 0), aggressive mode is switched off for good and the
    policy behaves as `JointUpdate`.
    `max_epochs` (None: no cap, the reference) is a budget cap, not part of He et al.'s rule: aggressive
    mode is also switched off after that many epochs when the MI stop has not fired by then. Reduced
    runs use it to keep the aggressive phase's share of training near the papers' (it usually stops
    within 5 of 100 epochs; each aggressive epoch costs tens of plain epochs).
    """

    name = "aggressive"

    def __init__(self, max_inner_steps: int = 100, window: int = 15, initial_window_loss: float = 1e4,
                 max_epochs: int | None = None):
        checked = [("max_inner_steps", max_inner_steps), ("inner window", window)]
        if max_epochs is not None:
            checked.append(("epochs cap (aggressive_epochs)", max_epochs))
        for label, value in checked:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"aggressive {label} must be a positive int, got {value!r}")
        self.max_inner_steps, self.window, self.max_epochs = max_inner_steps, window, max_epochs
        self.epochs_on = 0  # epochs trained with aggressive mode on
        self.initial_window_loss = float(initial_window_loss)
        self.active = True
        self.previous_mi = 0.0
        self.switched_off_epoch = None
        # encoder sub-steps taken (a host count: the stop decisions already live on the host)
        self.inner_steps = 0
        self.last_inner_steps = 0
        self.epoch_start_inner_steps = 0  # inner_steps when the current epoch began

    def step(self, trainer, batch, kl_weight: float) -> dict:
        if not self.active:
            result = trainer.compute_loss(batch, kl_weight)
            trainer.backward_and_step(result, step_encoder=True, step_decoder=True)
            return result.stats
        self.last_inner_steps = self.encoder_inner_loop(trainer, batch, kl_weight)
        self.inner_steps += self.last_inner_steps
        result = trainer.compute_loss(batch, kl_weight)
        trainer.backward_and_step(result, step_encoder=False, step_decoder=True)
        return result.stats

    def start_epoch(self) -> None:
        self.epoch_start_inner_steps = self.inner_steps

    def epoch_fields(self) -> dict:
        return {"aggressive": self.active, "aggressive_inner_steps": self.inner_steps - self.epoch_start_inner_steps}

    def epoch_summary(self, steps_done: int) -> str | None:
        if not steps_done:
            return None
        inner = self.inner_steps - self.epoch_start_inner_steps
        return f"aggressive: {inner / steps_done:.1f} encoder sub-steps/step" if inner else "aggressive off"

    def encoder_inner_loop(self, trainer, batch, kl_weight: float) -> int:
        """Runs the inner loop; returns how many encoder sub-steps it took."""
        previous = self.initial_window_loss
        window_loss = window_words = None
        enc_batch = batch
        sub = 0
        with frozen(trainer.decoder_parameters()):
            for sub in range(1, self.max_inner_steps + 1):
                if sub > 1:
                    enc_batch = trainer.random_train_batch()
                result = trainer.compute_loss(enc_batch, kl_weight)
                trainer.backward_and_step(result, step_encoder=True, step_decoder=False,
                                          clip_params=trainer.encoder_parameters())
                summed, words = result.stats["loss_sum"], result.stats["words"]
                window_loss = summed if window_loss is None else window_loss + summed
                window_words = words if window_words is None else window_words + words
                if sub % self.window == 0:
                    current = (window_loss / window_words).item()  # the stop decision needs the host
                    if previous - current < 0:
                        break
                    previous = current
                    window_loss = window_words = None
        return sub

    def end_of_epoch(self, trainer, valid_metrics: dict) -> str | None:
        if not self.active:
            return None
        mi = float(valid_metrics["mi_batch"])
        message = None
        if mi - self.previous_mi < 0:
            self.active = False
            self.switched_off_epoch = trainer.epoch
            message = (f"aggressive training switched off: validation MI fell from "
                       f"{self.previous_mi:.4f} to {mi:.4f}")
        self.previous_mi = mi
        self.epochs_on += 1
        if self.active and self.max_epochs is not None and self.epochs_on >= self.max_epochs:
            self.active = False
            self.switched_off_epoch = trainer.epoch
            message = (f"aggressive training switched off after {self.epochs_on} epoch(s): the aggressive_epochs "
                       f"cap (the MI stop had not fired; validation MI {mi:.4f})")
        return message

    def state_dict(self) -> dict:
        return {"active": self.active, "previous_mi": self.previous_mi, "inner_steps": self.inner_steps,
                "switched_off_epoch": self.switched_off_epoch, "epochs_on": self.epochs_on,
                "epoch_start_inner_steps": self.epoch_start_inner_steps}

    def load_state_dict(self, state: dict) -> None:
        self.active = bool(state["active"])
        self.previous_mi = float(state["previous_mi"])
        self.inner_steps = int(state["inner_steps"])
        self.switched_off_epoch = state.get("switched_off_epoch")
        self.epochs_on = int(state.get("epochs_on", 0))  # absent from checkpoints written before the cap
        # kept by the trainer in checkpoints written before the policy kept it (see Trainer._restore)
        self.epoch_start_inner_steps = int(state.get("epoch_start_inner_steps", 0))

    def describe(self) -> dict:
        return {"name": self.name, "max_inner_steps": self.max_inner_steps, "window": self.window,
                "max_epochs": self.max_epochs}
