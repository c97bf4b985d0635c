"""The Trainer: runs a recipe's phases with the references' optimisation, logs, checkpoints, plots.

    from fastvae import Trainer
    from fastvae.data import BUILTIN_CORPORA
    corpus = BUILTIN_CORPORA["grammar"]()
    trainer = Trainer(None, corpus, recipe="cyclical", config="tiny", epochs=10, out_dir="runs/demo")
    test_metrics = trainer.fit()

Every training step stays on the device: losses and counts accumulate as tensors and the host
reads them once per log interval and per epoch (the aggressive policy's stop rule reads once per
15-step window: a decision that needs it). A non-finite loss is recorded on the device with its
step and stops the run at the next read, before any checkpoint could be written from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass

import torch

from .. import __version__
from .checkpoint import FORMAT_VERSION, capture_rng_state, read_checkpoint, restore_rng_state, write_checkpoint
from .distributed import (SINGLE, DistContext, all_gather_object, allreduce_gradients, broadcast_parameters,
                          global_noise, main_reads, shard_batch)
from .optim import (DEFAULT_LR, OPTIMIZERS, PlateauDecay, clip_grad_norm, make_optimizer,
                    sparse_embedding_gradients_apply)
from .recipes import RECIPE_OPTIONS, Recipe, build_recipe
from .run_dir import open_run_directory
from .run_state import ProgressField, RunProgress
from .schedules import CosineRestartLR
from .step import StepResult
from ..data.batching import BATCH_MODES
from ..data.fingerprint import describe_changes
from ..devices import resolve_device
from ..host_memory import keep_freed_memory
from ..logs import console_output, progress_bar
from ..options import option, validate as validate_options
from ..models.config import ModelConfig
from ..models.protocol import (check_lm_model, check_vae_model, is_vae_model, model_class_name, model_source,
                               resolve_reset_decoder)
from ..precision import PRECISIONS, resolve as resolve_precision

log = logging.getLogger("fastvae.train")

DEFAULT_BATCH_SIZE = 32  # the papers' batch, for a model without a fastvae config


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN/inf; the message names the step and what was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after a finished step; `last.pt` then holds that step (resumable)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainConfig:
    """Training options (the recipe's own options live in `recipe_options`). Each is declared once, with its
    help and bounds (fastvae.options): `validate()` and the command line's flags are generated from these."""

    recipe: str = option("vae", "the recipe (fastvae.training.recipes)", kind=str, flag=False)
    recipe_options: dict = option({}, "the recipe's own options", kind=dict, flag=False)
    config: str = option("tiny", "model config name (used when no model is given)", kind=str, flag=False)
    epochs: int | None = option(None, "epochs per phase", kind=int, minimum=1,
                                unset="the recipe's: 100, and 40 for cyclical's ptb-script variant, Fu et al.'s script")
    batch_size: int | None = option(None, "sentences per batch", kind=int, minimum=1,
                                    unset="the model config's; 32 for a model without a fastvae config")
    batch_mode: str = option("bucket", "bucket: sentences of one length per batch (the references); padded",
                             kind=str, choices=BATCH_MODES)
    optimizer: str | None = option(None, "sgd or adam", kind=str, choices=OPTIMIZERS,
                                   unset="the recipe's: sgd, adam for cyclical's ptb-script")
    lr: float | None = option(None, "learning rate", kind=float, minimum=0, exclusive=True,
                              unset="the recipe's for the optimizer")
    momentum: float = option(0.0, "SGD momentum", kind=float, minimum=0)
    clip: float = option(5.0, "gradient-norm clip (0: off)", kind=float, minimum=0)
    patience: int | None = option(None, "epochs without improvement before a decay", kind=int, minimum=1,
                                  unset="the recipe's: He et al. 2, Li et al. 5")
    decay_factor: float = option(0.5, "learning-rate factor of a decay", kind=float, minimum=0)
    decay_min_epoch: int = option(15, "no decay before this epoch", kind=int, minimum=0)
    max_decays: int = option(5, "stop after this many decays", kind=int, minimum=1)
    plateau_decay: bool | None = option(None, "decay-on-plateau with best-checkpoint reload", kind=bool,
                                        unset="the recipe's: on, off for cyclical's ptb-script variant, whose "
                                              "schedule is the cosine restart")
    seed: int = option(0, "random seed of the run", kind=int)
    device: str = option("cpu", "cpu or cuda", kind=str)
    precision: str = option("fp32", "fp32; bf16: bf16 GEMMs on bf16 weight copies, float32 master weights, loss "
                                    "and optimiser; auto: bf16 where the CPU has AMX/AVX512-BF16 or the GPU "
                                    "supports bf16 (fastvae.precision)", kind=str, choices=PRECISIONS)
    eval_batch_size: int = option(64, "sentences evaluated at once (speed and memory only)", kind=int, minimum=1)
    mi_batch_size: int = option(32, "the per-batch MI estimator's batch (He et al.'s 32); aggressive's MI stop "
                                    "uses it", kind=int, minimum=1)
    iw_samples: int = option(500, "importance samples of the final test NLL (0: no IW-NLL)", kind=int, minimum=0)
    log_interval: int = option(50, "steps between host reads (progress bar, NaN check)", kind=int, minimum=1)
    checkpoint_every: int = option(0, "steps between mid-epoch last.pt writes (0: at epoch ends only)", kind=int,
                                   minimum=0)
    progress: bool = option(True, "progress bar", kind=bool, flag=False)
    verbose: bool = option(True, "print epoch lines", kind=bool, flag=False)

    def validate(self) -> None:
        validate_options(self)
        if self.momentum and self.optimizer == "adam":
            raise ValueError("conflicting options: momentum applies to sgd, not adam")

    @classmethod
    def flags(cls) -> list:
        """The fields that are command-line options (`fastvae train --name-with-dashes`)."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata["fastvae"]["flag"]]


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_ALL_RECIPE_OPTIONS = set().union(*RECIPE_OPTIONS.values())


def _derive_seed(*parts: int) -> int:
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + 1442695040888963407) % (2 ** 63)
    return value


class Trainer:
    """Trains `model` (or a model built from `config`) on `corpus` with a named recipe.

    Trainer(model, corpus, *, recipe="vae", out_dir=None, config="tiny", epochs=..., <TrainConfig
    fields>, <recipe options>) ; `.fit()` returns the final test metrics. Options are checked:
    an unknown name, or a recipe option the chosen recipe does not take, is a ValueError.
    `out_dir=None` writes nothing (the best model is kept in memory). A run directory is locked while
    `fit()` runs, and a fresh run refuses one that already holds a run unless `overwrite=True`
    (which deletes fastvae's own files in it); see `fastvae.training.run_dir`. A resume refuses data
    files whose fingerprints (`corpus_info["fingerprints"]`) changed unless `allow_changed_data=True`.
    `distributed`: a `fastvae.training.distributed.DistContext` (from `init_distributed()` under
    torchrun): every rank runs this trainer on its rows of each global batch; gradients and step
    statistics are all-reduced, evaluation is sharded, only rank 0 writes and prints.
    `step_callbacks`: callables `fn(trainer)` run after every optimiser step, on every rank, in training mode
    (for diagnostics; `fastvae.evaluation.inference_lag.PosteriorTracker` is one). They must not change the
    model or draw from the global RNG if a resumed run is to stay bitwise equal.
    """

    # where the run is: attributes of self.progress (a RunProgress), saved and restored as one object
    phase_index = ProgressField()
    epoch = ProgressField()
    position = ProgressField()
    step = ProgressField()
    global_step = ProgressField()
    best_value = ProgressField()
    best_epoch = ProgressField()
    history = ProgressField()
    stopped_reason = ProgressField()

    def __init__(self, model, corpus, *, recipe: str = "vae", out_dir: str | None = None,
                 recipe_options: dict | None = None, corpus_info: dict | None = None,
                 distributed: DistContext | None = None, overwrite: bool = False, allow_changed_data: bool = False,
                 step_callbacks=(), **options):
        recipe_options = dict(recipe_options or {})
        train_options = {}
        for key, value in options.items():
            if key in _TRAIN_FIELDS and key not in ("recipe", "recipe_options"):
                train_options[key] = value
            elif key in _ALL_RECIPE_OPTIONS:
                recipe_options[key] = value
            else:
                raise ValueError(f"unknown Trainer option {key!r}; training options: "
                                 f"{', '.join(sorted(_TRAIN_FIELDS))}; recipe options: "
                                 f"{', '.join(sorted(_ALL_RECIPE_OPTIONS))}")
        if hasattr(train_options.get("config"), "name"):  # a ModelConfig object
            self._model_config_obj = train_options.pop("config")
            train_options["config"] = self._model_config_obj.name
        else:
            self._model_config_obj = None
        self.cfg = TrainConfig(recipe=recipe, recipe_options=recipe_options, **train_options)
        self.cfg.validate()
        self.recipe: Recipe = build_recipe(recipe, recipe_options)
        self.cfg.recipe_options = {k: v for k, v in recipe_options.items() if v is not None}
        self.corpus = corpus
        self.corpus_info = corpus_info or {}
        self.out_dir = out_dir
        self.overwrite = bool(overwrite)
        self.allow_changed_data = bool(allow_changed_data)
        self._stop_signal = None  # set by SIGINT/SIGTERM while fit() runs
        self._resume_path = self._resume_checkpoint = None  # set by from_checkpoint
        self.step_callbacks = list(step_callbacks)
        for callback in self.step_callbacks:
            if not callable(callback):
                raise ValueError(f"step_callbacks must be callables fn(trainer), got {type(callback).__name__}")
        self.dist = distributed if distributed is not None else SINGLE
        if not isinstance(self.dist, DistContext):
            raise ValueError(f"distributed must be a DistContext (fastvae.training.distributed.init_distributed()), "
                             f"got {type(distributed).__name__}")
        self.device = resolve_device(self.cfg.device)
        if self.device.type == "cpu":  # the step's freed megabytes stay in the process (fastvae.host_memory)
            keep_freed_memory()
        if self.dist.enabled and self.device.type != self.dist.device.type:
            raise ValueError(f"device {self.cfg.device!r} differs from the distributed context's "
                             f"{self.dist.device}: give the same --device to every rank")
        if self.dist.enabled:
            self.device = self.dist.device  # cuda:LOCAL_RANK under torchrun
        self.precision = resolve_precision(self.cfg.precision, self.device)  # auto decided here, once
        if self.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16 asked for, but this GPU does not support bfloat16; use fp32")
        self._check_corpus(corpus)

        if model is None:  # the model's initialisation follows the seed too
            torch.manual_seed(self.cfg.seed)
        self.model = self._build_or_check_model(model)
        # a model of fastvae's configs has one (checkpoints rebuild it by name); a user's own model need not
        self.model_config = getattr(self.model, "config", None)
        if not isinstance(self.model_config, ModelConfig):
            self.model_config = None
        self.model.to(self.device)
        broadcast_parameters(self.model, self.dist)  # every rank starts from rank 0's weights
        self.batch_size = self.cfg.batch_size or (self.model_config.batch_size if self.model_config is not None
                                                  else DEFAULT_BATCH_SIZE)
        if self.is_vae:
            for phase in self.recipe.phases:  # pretrain-fb's decoder reset: the option, else the model's default
                if phase.reset_decoder is not False:
                    phase.reset_decoder = resolve_reset_decoder(self.model, phase.reset_decoder)
        # a model that keeps bfloat16 copies of its weights runs its decoder GEMMs on them (no autocast there)
        self._model_casts_itself = self.precision == "bf16" and hasattr(self.model, "set_compute_dtype")
        if self._model_casts_itself:
            self.model.set_compute_dtype(torch.bfloat16)
        if self.precision == "bf16":
            self._check_bf16()
        defaults = self.recipe.train_defaults
        self.optimizer_name = self.cfg.optimizer or defaults.get("optimizer", "sgd")
        if self.cfg.lr is not None:
            self.base_lr = float(self.cfg.lr)
        elif self.optimizer_name == defaults.get("optimizer", "sgd"):
            self.base_lr = defaults.get("lr", DEFAULT_LR[self.optimizer_name])
        else:
            self.base_lr = DEFAULT_LR[self.optimizer_name]
        self.patience = self.cfg.patience or defaults.get("patience", 2)
        self.default_epochs = self.cfg.epochs or defaults.get("epochs", 100)
        # fastvae's own models: embedding gradients as the rows a batch touched, where the update allows it
        # (a dense [vocab, emb] gradient costs a zero fill, a norm and an update pass over the whole table)
        if sparse_embedding_gradients_apply(self.optimizer_name, self.cfg.momentum, self.dist.enabled) \
                and model is None:
            for module in self.model.modules():
                if isinstance(module, torch.nn.Embedding):
                    module.sparse = True
        self.plateau_decay = (self.cfg.plateau_decay if self.cfg.plateau_decay is not None
                              else defaults.get("plateau_decay", True))

        # state (all of it goes into checkpoints): where the run is, as one object (run_state.py), and the
        # objects that keep their own state
        self.progress = RunProgress()
        self._best_state = None
        self.plateau: PlateauDecay | None = None
        self.optimizers: dict = {}
        self._epoch_sums = None
        self._bad_step = None
        self._data_gen = torch.Generator()
        self._aux_gen = torch.Generator().manual_seed(_derive_seed(self.cfg.seed, 1))
        # reparameterisation noise for the whole global batch (every rank keeps it in step and
        # takes its rows): a row's noise does not depend on the number of ranks
        self._noise_gen = torch.Generator(device=self.device).manual_seed(_derive_seed(self.cfg.seed, 5))
        self._batches: list = []
        self.test_metrics = None

    # ----------------------------------------------------------------- setup helpers
    @staticmethod
    def _check_corpus(corpus):
        for split in ("train", "valid", "test"):
            dataset = getattr(corpus, split, None)
            if dataset is None or len(dataset) == 0:
                raise ValueError(f"the corpus has no {split} sentences; training needs train, valid and test splits")

    def _build_or_check_model(self, model):
        from ..models import build_model, get_config

        kind = self.recipe.model_kind
        if model is None:
            config = self._model_config_obj or get_config(self.cfg.config)
            return build_model(kind, len(self.corpus.vocab), config)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
        if (kind == "vae") != is_vae_model(model):
            raise ValueError(f"recipe {self.recipe.name!r} trains a {'VAE' if kind == 'vae' else 'language model'}, "
                             f"but the model given is a {type(model).__name__} "
                             f"({'without' if kind == 'vae' else 'with'} encode(); fastvae.models.protocol)")
        if kind == "vae":
            check_vae_model(model)
        else:
            check_lm_model(model)
        if getattr(model, "vocab_size", len(self.corpus.vocab)) != len(self.corpus.vocab):
            raise ValueError(f"the model's vocabulary size ({model.vocab_size}) differs from the corpus's "
                             f"({len(self.corpus.vocab)})")
        return model

    def _check_bf16(self):
        """One forward+backward under bf16 autocast on two training sentences: a clear error up front when
        an op of this model cannot run under autocast on this device, instead of a failure mid-epoch."""
        from ..data import make_batches

        probe = make_batches(self.corpus.train, 2, mode="padded", shuffle=False)[0].to(self.device)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        rng = torch.get_rng_state()
        try:
            with self._autocast():
                if self.is_vae:
                    mu, logvar = self.model.encode(probe.tokens, probe.lengths)
                    loss = self.model.reconstruction(probe.tokens, probe.lengths, mu.float()).float().mean()
                else:
                    loss = self.model.nll(probe.tokens, probe.lengths).float().mean()
            loss.backward()
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"--precision bf16 is not supported by this model on {self.device} "
                             f"({type(exc).__name__}: {exc}); use --precision fp32") from exc
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.load_state_dict(state)
            torch.set_rng_state(rng)

    @property
    def is_vae(self) -> bool:
        return self.recipe.model_kind == "vae"

    def encoder_parameters(self):
        return list(self.model.encoder_parameters()) if self.is_vae else []

    def decoder_parameters(self):
        return list(self.model.decoder_parameters()) if self.is_vae else list(self.model.parameters())

    def _new_plateau(self) -> PlateauDecay:
        """A fresh decay-on-plateau for a phase (or one to load a checkpoint's state into)."""
        return PlateauDecay(self.base_lr, patience=self.patience, factor=self.cfg.decay_factor,
                            min_epoch=self.cfg.decay_min_epoch, max_decays=self.cfg.max_decays,
                            enabled=self.plateau_decay)

    def _new_optimizers(self, lr: float):
        self.optimizers = {"decoder": make_optimizer(self.optimizer_name, self.decoder_parameters(), lr,
                                                     self.cfg.momentum)}
        if self.is_vae:
            self.optimizers["encoder"] = make_optimizer(self.optimizer_name, self.encoder_parameters(), lr,
                                                        self.cfg.momentum)

    def _set_lr(self, lr: float):
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    @property
    def phase(self):
        return self.recipe.phases[self.phase_index]

    def _phase_epochs(self, phase) -> int:
        return phase.epochs or self.default_epochs

    def _autocast(self, own_copies: bool = False):
        """bf16: autocast, except around a model that keeps its own bfloat16 weight copies (`own_copies=True` marks
        the calls into such a model; `set_compute_dtype`: cast once per optimiser step instead of at every use)."""
        if self.precision == "bf16" and not (own_copies and self._model_casts_itself):
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _epoch_batches(self):
        from ..data import make_batches

        self._data_gen.manual_seed(_derive_seed(self.cfg.seed, 2, self.phase_index, self.epoch))
        batches = make_batches(self.corpus.train, self.batch_size, mode=self.cfg.batch_mode, shuffle=True,
                               generator=self._data_gen)
        if not batches:
            raise ValueError("the training split produced no batches")
        return batches

    # ----------------------------------------------------------------- the step (used by policies)
    def compute_loss(self, batch, kl_weight: float) -> StepResult:
        """The loss of one global batch at KL weight `kl_weight`, as a StepResult (nothing is kept here).

        Distributed: the loss is that of this rank's rows (their mean); `backward_and_step` turns the
        gradients and the result's stats (in place) into the global batch's."""
        global_rows = batch.tokens.shape[0]
        batch = shard_batch(batch, self.dist).to(self.device)
        tokens, lengths = batch.tokens, batch.lengths
        n = tokens.shape[0]
        words = (lengths - 1).sum()
        if n == 0:  # a batch with fewer rows than ranks: this rank contributes nothing
            if self.is_vae:  # keep the noise generator in step with the other ranks
                global_noise(global_rows, self.model.latent_dim, self.dist, generator=self._noise_gen)
            zero = torch.zeros((), device=self.device)
            stats = {"loss_sum": zero, "rec_sum": zero.clone(), "kl_sum": zero.clone(), "words": words,
                     "sentences": global_rows}
            return StepResult(zero, stats, 0, global_rows)
        if not self.is_vae:
            with self._autocast():
                loss, nll = self._lm_loss(tokens, lengths, n)
            detached = nll.sum()
            stats = {"loss_sum": detached, "rec_sum": detached, "kl_sum": torch.zeros_like(detached),
                     "words": words, "sentences": global_rows}
            return StepResult(loss, stats, n, global_rows)
        with self._autocast(own_copies=True):  # a model with its own weight copies casts its encoder too
            mu, logvar = self.model.encode(tokens, lengths)
        mu, logvar = mu.float(), logvar.float()
        if self.dist.enabled:
            eps = global_noise(global_rows, mu.shape[1], self.dist, generator=self._noise_gen)
            z, kl_term, kl_dim = self.phase.objective.sample(mu, logvar, noise=eps)
        else:  # the same draw: [rows, 1, nz] from the noise generator
            z, kl_term, kl_dim = self.phase.objective.sample(mu, logvar, generator=self._noise_gen)
        with self._autocast(own_copies=True):
            rec_loss, rec = self._reconstruction_loss(tokens, lengths, z, n)
        loss = rec_loss + kl_weight * kl_term
        stats = {"loss_sum": loss.detach() * n, "rec_sum": rec.sum(), "kl_sum": kl_dim.sum() * n,
                 "words": words, "sentences": global_rows}
        return StepResult(loss, stats, n, global_rows)

    def _reconstruction_loss(self, tokens, lengths, z, rows: int):
        """(mean over the rows of -log p(x|z), differentiable; per sentence, detached): the model's fused
        `reconstruction_loss` when it has one, else the mean of its `reconstruction`."""
        fused = getattr(self.model, "reconstruction_loss", None)
        if fused is not None:
            loss, rec = fused(tokens, lengths, z, scale=1.0 / rows)
            return loss.float(), rec.float()
        rec = self.model.reconstruction(tokens, lengths, z).float()
        return rec.mean(), rec.detach()

    def _lm_loss(self, tokens, lengths, rows: int):
        fused = getattr(self.model, "nll_loss", None)
        if fused is not None:
            loss, nll = fused(tokens, lengths, scale=1.0 / rows)
            return loss.float(), nll.float()
        nll = self.model.nll(tokens, lengths).float()
        return nll.mean(), nll.detach()

    def backward_and_step(self, result: StepResult, *, step_encoder: bool, step_decoder: bool, clip_params=None):
        """Backward of `result.loss`, gradient all-reduce (torchrun), clip, and the chosen optimiser steps."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if result.loss.requires_grad:  # an empty shard's zero loss has no graph
            result.loss.backward()
        if self.dist.enabled:
            # exact data parallelism: the global batch's gradient on every rank (frozen parameters
            # excluded), and the step's stats summed over ranks in the same all-reduce
            stats = result.stats
            keys = ("loss_sum", "rec_sum", "kl_sum", "words")
            synced = allreduce_gradients(self.model.parameters(), self.dist, local_rows=result.local_rows,
                                         global_rows=result.global_rows, extras={k: stats[k] for k in keys})
            stats.update(synced)
        params = list(self.model.parameters()) if clip_params is None else list(clip_params)
        params = [p for p in params if p.grad is not None]
        if self.cfg.clip > 0 and params:
            # foreach: one multi-tensor norm instead of a kernel per parameter (5.2 -> 2.0 ms per ptb step on a
            # 2-core CPU); sparse embedding gradients are clipped by their rows
            clip_grad_norm(params, self.cfg.clip)
        if step_encoder and "encoder" in self.optimizers:
            self.optimizers["encoder"].step()
        if step_decoder:
            self.optimizers["decoder"].step()

    def random_train_batch(self):
        """A global training batch drawn uniformly (the same on every rank; compute_loss shards it)."""
        index = int(torch.randint(len(self._batches), (1,), generator=self._aux_gen))
        return self._batches[index]

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, dataset, *, final: bool):
        from ..evaluation import evaluate

        if self.is_vae:
            metrics = None if final else ["rec", "kl", "elbo", "mi", "mi_batch", "au"]
            if final and self.cfg.iw_samples == 0:
                metrics = ["rec", "kl", "elbo", "mi", "mi_batch", "au"]
        else:
            metrics = ["nll", "ppl"]
        gen = torch.Generator(device=self.device).manual_seed(
            _derive_seed(self.cfg.seed, 3, self.phase_index, self.epoch, int(final)))
        was_training = self.model.training
        self.model.eval()
        try:
            # under torchrun: this rank's shard, whole-set MI/AU over the union of all ranks' rows
            result = evaluate(self.model, dataset, batch_size=self.cfg.eval_batch_size,
                              iw_samples=max(self.cfg.iw_samples, 1), metrics=metrics, device=self.device,
                              generator=gen, batch_mode=self.cfg.batch_mode, mi_batch_size=self.cfg.mi_batch_size,
                              distributed=self.dist)
        finally:
            self.model.train(was_training)
        return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in result.items()}

    def _selection_value(self, metrics: dict) -> float:
        by = self.phase.select_by
        if by == "nll":
            return float(metrics["nll"])
        if by == "rec":
            return float(metrics["rec"])
        if by == "beta-loss":  # the beta recipe's own objective, beta x the unmasked KL (Li et al.'s text_beta.py)
            return float(metrics["rec"]) + self.phase.objective.scale * float(metrics["kl"])
        return float(metrics["rec"]) + float(metrics["kl"])  # the true ELBO loss, unmasked KL

    # ----------------------------------------------------------------- checkpoints and logs
    def _path(self, name: str) -> str | None:
        """Where rank 0 writes `name`; None when nothing is written (no out_dir, or another rank)."""
        return None if self.out_dir is None or not self.dist.is_main else os.path.join(self.out_dir, name)

    def _best_name(self, phase_index=None) -> str:
        phase_index = self.phase_index if phase_index is None else phase_index
        if phase_index == len(self.recipe.phases) - 1:
            return "best.pt"
        return f"best_{self.recipe.phases[phase_index].name}.pt"

    def _model_is_finite(self) -> bool:
        flags = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()])
        return bool(flags.all())

    def checkpoint_dict(self, *, resumable: bool = True, rank_rng: list | None = None) -> dict:
        ckpt = {
            "format_version": FORMAT_VERSION, "fastvae_version": __version__, "kind": self.recipe.model_kind,
            "model_config": self._model_config_dict(), "model_class": model_class_name(self.model),
            "model_source": model_source(self.model), "vocab": self.corpus.vocab.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "corpus": self.corpus_info, "recipe": self.recipe.name,
        }
        if resumable:
            sums = None if self._epoch_sums is None else {k: float(v) for k, v in self._epoch_sums.items()}
            ckpt.update({
                "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
                "trainer": {**self.progress.state_dict(),
                            "plateau": None if self.plateau is None else self.plateau.state_dict(),
                            "policy": self.phase.policy.state_dict(), "epoch_sums": sums},
                "rng": capture_rng_state(data=self._data_gen, aux=self._aux_gen, noise=self._noise_gen),
                "train_config": dataclasses.asdict(self.cfg),
                "world_size": self.dist.world_size,
            })
            if rank_rng is not None:  # every rank's own torch RNG (dropout) for an exact distributed resume
                ckpt["rng"]["rank_torch"] = rank_rng
        return ckpt

    def _model_config_dict(self) -> dict | None:
        return None if self.model_config is None else dataclasses.asdict(self.model_config)

    @property
    def model_name(self) -> str:
        """The config's name for fastvae's models, the class's for others (logs, plots)."""
        return self.model_config.name if self.model_config is not None else type(self.model).__name__

    def save_checkpoint(self, name: str) -> None:
        if self.out_dir is None:
            return
        # every rank checks (the parameters are the same everywhere), so all stop together
        if not self._model_is_finite():
            raise TrainingDiverged(f"the model has non-finite parameters at step {self.global_step}; "
                                   f"{name} was not written. {self._what_was_kept()}")
        rank_rng = all_gather_object(torch.get_rng_state(), self.dist) if self.dist.enabled else None
        path = self._path(name)
        if path is not None:
            write_checkpoint(self.checkpoint_dict(rank_rng=rank_rng), path)

    def _log_record(self, record: dict) -> None:
        self.history.append(record)
        path = self._path("metrics.jsonl")
        if path is not None:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _write_config(self) -> None:
        path = self._path("config.json")
        if path is None:
            return
        info = {"fastvae_version": __version__, "train": dataclasses.asdict(self.cfg),
                "recipe": self.recipe.describe(), "model_kind": self.recipe.model_kind,
                "model_config": self._model_config_dict(), "model_class": model_class_name(self.model),
                "model_source": model_source(self.model), "vocab_size": len(self.corpus.vocab),
                "corpus": self.corpus_info, "corpus_stats": getattr(self.corpus, "stats", {}),
                "optimizer": self.optimizer_name, "lr": self.base_lr, "patience": self.patience,
                "batch_size": self.batch_size, "device": str(self.device),
                "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
        with open(path, "w") as handle:
            json.dump(info, handle, indent=2, default=str)

    def _plot(self) -> None:
        path = self._path("training.png")
        if path is None:
            return
        from .plots import plot_history

        plot_history(self.history, path, title=f"{self.recipe.name} ({self.model_name})")

    def _print(self, text: str) -> None:
        """One of the run's INFO messages, from rank 0, to the `fastvae.train` logger (fastvae.logs)."""
        if self.dist.is_main:
            log.info(text)

    # ----------------------------------------------------------------- phases and epochs
    def _start_phase(self, fresh: bool):
        phase = self.phase
        if fresh:
            if phase.reset_decoder:
                # Li et al.: the full model selected in the previous phase, decoder re-initialised,
                # encoder kept (and trained on), new optimisers
                if self._best_state is not None:
                    self.model.load_state_dict(self._best_state)
                self.model.reset_decoder_parameters()
                broadcast_parameters(self.model, self.dist)  # ranks draw other random weights
            self.plateau = self._new_plateau()
            self.best_value, self.best_epoch, self._best_state = math.inf, None, None
            self.epoch = self.position = self.step = 0
            self.stopped_reason = None  # why *this* phase stops; the previous phase's reason is in its log
            self._new_optimizers(self.plateau.lr)
        self._batches = self._epoch_batches()
        phase.schedule.bind(len(self._batches), self._phase_epochs(phase))
        self._lr_factor = (CosineRestartLR(phase.schedule, per_epoch=phase.lr_restart == "cosine-epoch")
                           if phase.lr_restart in ("cosine", "cosine-epoch") else None)
        if self._lr_factor is not None and not hasattr(phase.schedule, "position"):
            raise ValueError("a cosine learning-rate restart needs the cyclical KL schedule")

    def _zero_sums(self):
        zero = torch.zeros((), device=self.device)
        return {"loss_sum": zero.clone(), "rec_sum": zero.clone(), "kl_sum": zero.clone(),
                "words": torch.zeros((), device=self.device, dtype=torch.long), "sentences": 0}

    def _read_bad_step(self):
        bad = int(self._bad_step)
        if bad >= 0:
            raise TrainingDiverged(
                f"non-finite training loss (NaN/inf) at step {bad} (phase {self.phase.name!r}, epoch "
                f"{self.epoch + 1}); stopped. {self._what_was_kept()}; try a lower learning rate, gradient "
                f"clipping, or --precision fp32")

    def _what_was_kept(self) -> str:
        """What a run that stops now leaves behind (only finite checkpoints are ever written)."""
        if self.out_dir is None:
            return "Nothing was written (no run directory)"
        kept = [name for name in ("last.pt", "best.pt", "best_pretrain.pt")
                if os.path.exists(os.path.join(self.out_dir, name))]
        if not kept:
            return f"No checkpoint had been written yet: {self.out_dir} holds no model to resume from"
        return (f"The last good checkpoints are kept in {self.out_dir}: {', '.join(kept)}, from before the failure")

    def _train_epoch(self):
        phase = self.phase
        model = self.model
        model.train()
        if self._epoch_sums is None or self.position == 0:
            self._epoch_sums = self._zero_sums()
        sums = self._epoch_sums
        total = len(self._batches)
        if self.position == 0:
            phase.policy.start_epoch()
        bar = None
        if self.cfg.progress and self.dist.is_main:  # a tqdm bar on a terminal, whole log lines elsewhere
            bar = progress_bar(total, self.position, f"{phase.name} epoch {self.epoch + 1}/{self._phase_epochs(phase)}")
        start = time.perf_counter()
        steps_done = 0
        try:
            while self.position < total:
                batch = self._batches[self.position]  # global; compute_loss moves this rank's rows
                kl_weight = phase.schedule(self.step)
                if self._lr_factor is not None:
                    self._set_lr(self.plateau.lr * self._lr_factor(self.step))
                stats = phase.policy.step(self, batch, kl_weight)
                bad = ~torch.isfinite(stats["loss_sum"])
                step_t = torch.full((), self.global_step, dtype=torch.long, device=self.device)
                self._bad_step = torch.where(bad & (self._bad_step < 0), step_t, self._bad_step)
                for key in ("loss_sum", "rec_sum", "kl_sum", "words"):
                    sums[key] += stats[key]
                sums["sentences"] += stats["sentences"]
                self.position += 1
                self.step += 1
                self.global_step += 1
                steps_done += 1
                for callback in self.step_callbacks:
                    callback(self)
                if bar is not None:
                    bar.update(1)
                if self.global_step % self.cfg.log_interval == 0:
                    self._read_bad_step()
                    if bar is not None:
                        n = max(sums["sentences"], 1)
                        bar.set_postfix(loss=f"{float(sums['loss_sum']) / n:.2f}",
                                        kl=f"{float(sums['kl_sum']) / n:.2f}", w=f"{kl_weight:.3f}")
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0 \
                        and self.position < total:
                    self._read_bad_step()
                    self.save_checkpoint("last.pt")
                if self._stop_signal is not None and self.position < total:
                    self._stop_for_signal()
        finally:
            if bar is not None:
                bar.close()
        self._read_bad_step()
        elapsed = time.perf_counter() - start
        n = max(sums["sentences"], 1)
        words = int(sums["words"])
        train = {"loss": float(sums["loss_sum"]) / n, "rec": float(sums["rec_sum"]) / n,
                 "kl": float(sums["kl_sum"]) / n}
        return train, elapsed, words, steps_done

    def _end_epoch(self, train: dict, elapsed: float, words: int, steps_done: int) -> bool:
        """Validation, selection, decay, logs and checkpoints; returns True when the phase must stop."""
        phase = self.phase
        policy_fields = phase.policy.epoch_fields()  # the state this epoch trained with
        valid = self._evaluate(self.corpus.valid, final=False)
        message = phase.policy.end_of_epoch(self, valid)
        value = self._selection_value(valid)
        improved = value < self.best_value
        if improved:
            self.best_value, self.best_epoch = value, self.epoch + 1
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        kl_weight = phase.schedule(max(self.step - 1, 0))
        lr_now = self.optimizers["decoder"].param_groups[0]["lr"]
        common = {"epoch": self.epoch + 1, "phase": phase.name, "step": self.global_step,
                  "kl_weight": kl_weight, "lr": lr_now}
        common.update(policy_fields)
        self._log_record({**common, "split": "train", **train, "elbo": train["rec"] + train["kl"],
                          "seconds": elapsed, "tokens_per_s": words / elapsed if elapsed > 0 else None})
        self._log_record({**common, "split": "valid", **valid, "selection": value, "best": improved})
        if improved:
            self.save_checkpoint(self._best_name())
        decayed = self.plateau.update(value, self.epoch)
        if decayed:
            # the references: reload the best checkpoint, new optimisers at the decayed rate
            if self._best_state is not None:
                self.model.load_state_dict(self._best_state)
            self._new_optimizers(self.plateau.lr)
        self._print(self._epoch_line(train, valid, elapsed, words, steps_done, kl_weight, improved, decayed))
        if message:
            self._print("  " + message)
        self.epoch += 1
        self.position = 0
        self._epoch_sums = None
        stop = self.plateau.finished or self.epoch >= self._phase_epochs(phase)
        if self.plateau.finished:
            self.stopped_reason = f"stopped after {self.plateau.decays} learning-rate decays"
        if not stop:
            self._batches = self._epoch_batches()
        self.save_checkpoint("last.pt")
        self._plot()
        return stop

    def _epoch_line(self, train, valid, elapsed, words, steps_done, kl_weight, improved, decayed) -> str:
        phase = self.phase
        head = f"[{phase.name}] " if len(self.recipe.phases) > 1 else ""
        parts = [f"{head}epoch {self.epoch + 1:3d}/{self._phase_epochs(phase)}"]
        if self.is_vae:
            parts.append(f"w {kl_weight:.3f}")
            parts.append(f"train loss {train['loss']:7.3f} rec {train['rec']:7.3f} kl {train['kl']:6.3f}")
            parts.append(f"valid rec {valid['rec']:7.3f} kl {valid['kl']:6.3f} elbo {valid['rec'] + valid['kl']:7.3f}"
                         f" mi {valid['mi']:5.3f} au {int(valid['au']):2d}")
        else:
            parts.append(f"train nll {train['rec']:7.3f}")
            parts.append(f"valid nll {valid['nll']:7.3f} ppl {valid['ppl']:8.2f}")
        speed = f"{words / elapsed:,.0f} tok/s" if elapsed > 0 else ""
        parts.append(f"{elapsed:5.1f}s {speed}")
        summary = phase.policy.epoch_summary(steps_done)
        if summary:
            parts.append(summary)
        line = " | ".join(parts)
        if improved:
            line += " *"
        if decayed:
            line += f"  (lr -> {self.plateau.lr:g}, best reloaded)"
        return line

    # ----------------------------------------------------------------- public
    @classmethod
    def from_checkpoint(cls, path: str, corpus, *, corpus_info: dict | None = None,
                        distributed: DistContext | None = None, allow_changed_data: bool = False,
                        progress: bool | None = None, verbose: bool | None = None, step_callbacks=(),
                        checkpoint: dict | None = None, model=None) -> "Trainer":
        """The trainer of the run that wrote `path` (its run directory or `last.pt`), rebuilt from the checkpoint
        alone: recipe, recipe options, every training option and the model config as the run had them (migrated
        from older formats by `checkpoint.py`). `fit()` then continues the run exactly where it stopped. `corpus`
        must be the run's data (its vocabulary and, with `corpus_info`, its file fingerprints are checked);
        `progress`/`verbose` may differ (they change no result). `checkpoint`: the file's contents when the caller has
        already read it (`read_checkpoint`); it is then not read again, neither here nor by `fit()`. `model`: the
        run's model object when it is not one of fastvae's configs and the checkpoint cannot rebuild it (a user's
        own module; fastvae.hf models are rebuilt from their recorded sources); its weights are then loaded."""
        from ..models.protocol import rebuild_from_source

        last = os.path.join(path, "last.pt") if os.path.isdir(path) else path
        dist = distributed if distributed is not None else SINGLE
        saved = checkpoint if checkpoint is not None else main_reads(lambda: read_checkpoint(last), dist)
        if "trainer" not in saved or "train_config" not in saved:
            raise ValueError(f"{last!r} holds a model only (no training state); resuming needs the last.pt of a run")
        cfg = dict(saved["train_config"])
        options = {k: v for k, v in cfg.items() if k in _TRAIN_FIELDS and k not in ("recipe", "recipe_options")}
        if model is None and saved.get("model_config") is not None:
            options["config"] = ModelConfig.from_dict(saved["model_config"])  # the run's model, named or not
        elif model is None and saved.get("model_source") is not None:
            model = rebuild_from_source(saved["model_source"], where=repr(last))
        elif model is None:
            raise ValueError(f"{last!r} was written by a run that trained a {saved.get('model_class', 'user model')}, "
                             f"which the checkpoint cannot rebuild: pass the model (Trainer.from_checkpoint(path, "
                             f"corpus, model=...)); its weights are loaded from the checkpoint")
        for name, value in (("progress", progress), ("verbose", verbose)):
            if value is not None:
                options[name] = value
        out_dir = os.path.dirname(os.path.abspath(last))
        trainer = cls(model, corpus, recipe=cfg["recipe"], out_dir=out_dir, recipe_options=cfg["recipe_options"],
                      corpus_info=corpus_info, distributed=distributed, allow_changed_data=allow_changed_data,
                      step_callbacks=step_callbacks, **options)
        trainer._resume_path, trainer._resume_checkpoint = last, saved
        return trainer

    def fit(self, resume: str | None = None) -> dict:
        """Runs every phase, then evaluates the best checkpoint on the test split; returns its metrics.

        `resume`: a `last.pt` (or run directory) written by this trainer; training continues exactly
        where it stopped (same phase, epoch, batch position, optimiser, RNG and recipe state). A trainer from
        `Trainer.from_checkpoint` resumes its run without it.
        """
        if resume is None:
            resume = self._resume_path
        lock = None
        if self.out_dir is not None:
            def open_run():  # rank 0 writes the run, so rank 0 holds its lock; every rank sees a refusal
                nonlocal lock
                lock = open_run_directory(self.out_dir, resume=resume is not None, overwrite=self.overwrite)

            main_reads(open_run, self.dist)
        try:
            with self._stopping_on_signals(), self._console_output():
                return self._fit(resume)
        finally:
            if lock is not None:
                lock.release()

    @contextlib.contextmanager
    def _console_output(self):
        """verbose: while fit() runs, show the run's messages on stdout unless logging is configured to show
        them elsewhere (fastvae.logs); not verbose: fastvae adds no output of its own."""
        if not (self.cfg.verbose and self.dist.is_main):
            yield
            return
        with console_output():
            yield

    @contextlib.contextmanager
    def _stopping_on_signals(self):
        """SIGINT/SIGTERM: finish the step, write last.pt, raise TrainingInterrupted. A second SIGINT stops at
        once. Only a single process in its main thread: ranks of a torchrun job would have to agree on the
        step first (there, torchrun's SIGTERM ends the job and the last periodic last.pt is what is kept)."""
        self._stop_signal = None
        if self.dist.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # asked twice: do not wait for the step
            self._stop_signal = signum
            self._print(f"\n{signal.Signals(signum).name}: stopping after this step"
                        + (" and writing last.pt" if self.out_dir else ""))

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_for_signal(self) -> None:
        """Called between steps when a stop signal came: the step is complete, so last.pt resumes exactly."""
        signum = self._stop_signal
        self._read_bad_step()
        where = f"step {self.global_step} (phase {self.phase.name!r}, epoch {self.epoch + 1}, batch {self.position})"
        if self.out_dir is None:
            kept = "nothing was written (no run directory)"
        else:
            self.save_checkpoint("last.pt")
            kept = f"last.pt written; continue with: fastvae train --resume {self.out_dir}"
        raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after {where}; {kept}", signum)

    def _fit(self, resume: str | None) -> dict:
        fresh = True
        if resume is not None:
            self._restore(resume)
            fresh = False
        self._write_config()
        if fresh:  # dropout: each rank its own stream (rank 0's is the single-process one)
            torch.manual_seed(_derive_seed(self.cfg.seed, 4) + self.dist.rank)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._print(f"fastvae train: recipe {self.recipe.name}, model {self.model_name} "
                    f"({sum(p.numel() for p in self.model.parameters()):,} parameters), "
                    f"{len(self.corpus.train):,} training sentences, batch {self.batch_size} ({self.cfg.batch_mode}), "
                    f"{self.optimizer_name} lr {self.base_lr:g}, device {self.device}, precision {self.precision}"
                    + (f", out {self.out_dir}" if self.out_dir else ""))
        while self.phase_index < len(self.recipe.phases):
            self._start_phase(fresh)
            fresh = True
            if self.position == 0 and self.epoch == 0 and len(self.recipe.phases) > 1:
                self._print(f"phase {self.phase_index + 1}/{len(self.recipe.phases)}: {self.phase.name}")
            stop = self.epoch >= self._phase_epochs(self.phase)
            while not stop:
                train, elapsed, words, steps_done = self._train_epoch()
                stop = self._end_epoch(train, elapsed, words, steps_done)
                if self._stop_signal is not None and not stop:  # came during the epoch's last step or its end
                    self._stop_for_signal()
            if self._best_state is not None:
                self.model.load_state_dict(self._best_state)
            if self.phase_index + 1 < len(self.recipe.phases):
                self.phase_index += 1
                self.epoch = self.position = self.step = 0
            else:
                break
        return self._final_test()

    def _final_test(self) -> dict:
        test = self._evaluate(self.corpus.test, final=True)
        self.test_metrics = test
        self._log_record({"epoch": self.best_epoch, "phase": self.phase.name, "step": self.global_step,
                          "split": "test", **test, "checkpoint": self._best_name()})
        self._plot()
        self._print(format_metrics_table(test, title=f"test metrics (best checkpoint, epoch {self.best_epoch})"))
        return test

    def _restore(self, resume: str) -> None:
        path = os.path.join(resume, "last.pt") if os.path.isdir(resume) else resume
        held, self._resume_checkpoint = self._resume_checkpoint, None  # from_checkpoint's copy, used once
        ckpt = held if held is not None and path == self._resume_path else main_reads(lambda: read_checkpoint(path),
                                                                                       self.dist)
        if "trainer" not in ckpt:
            raise ValueError(f"{path!r} holds a model only (no training state); resume needs a last.pt")
        if ckpt["vocab"] != self.corpus.vocab.to_dict():
            raise ValueError(f"the vocabulary of {path!r} differs from the corpus's: resume with the same data")
        saved_files = (ckpt.get("corpus") or {}).get("fingerprints")
        current_files = self.corpus_info.get("fingerprints")
        if saved_files and current_files is not None:
            changes = describe_changes(saved_files, current_files)
            if changes and not self.allow_changed_data:
                raise ValueError(f"the data of {path!r} changed since the run started: {'; '.join(changes)}. "
                                 f"Resuming would continue mid-epoch on other sentences: restore the files, or "
                                 f"continue anyway with --allow-changed-data")
        if ckpt["kind"] != self.recipe.model_kind or ckpt["recipe"] != self.recipe.name:
            raise ValueError(f"{path!r} was written by recipe {ckpt['recipe']!r} ({ckpt['kind']}); "
                             f"this trainer runs {self.recipe.name!r}")
        saved_config = ckpt.get("model_config")
        if saved_config is not None and saved_config != self._model_config_dict():
            raise ValueError(f"{path!r} holds a model with config {saved_config}, but this trainer builds "
                             f"{self._model_config_dict()}: resume with the run's own options "
                             f"(fastvae train --resume RUN_DIR)")
        saved_class = ckpt.get("model_class")
        if saved_class is not None and saved_class != model_class_name(self.model):
            raise ValueError(f"{path!r} was written by a run that trained a {saved_class}, but this trainer's model "
                             f"is a {model_class_name(self.model)}")
        state = ckpt["trainer"]
        self.model.load_state_dict(ckpt["model"])
        self.progress.load_state_dict(state)
        self.plateau = self._new_plateau()
        self.plateau.load_state_dict(state["plateau"])
        self.phase.policy.load_state_dict(dict(state["policy"]))
        self._new_optimizers(self.plateau.lr)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        best_path = os.path.join(os.path.dirname(os.path.abspath(path)), self._best_name())

        def read_best():
            if self.best_epoch is not None and os.path.exists(best_path):
                return read_checkpoint(best_path)["model"]
            return None

        best = main_reads(read_best, self.dist)
        if best is not None:
            self._best_state = {k: v.to(self.device) for k, v in best.items()}
        if state["epoch_sums"] is not None and self.position > 0:
            sums = self._zero_sums()
            for key, value in state["epoch_sums"].items():
                sums[key] = value if key == "sentences" else torch.tensor(value, dtype=sums[key].dtype,
                                                                              device=self.device)
            self._epoch_sums = sums
        # metrics.jsonl: exactly the records of the restored history
        if self._path("metrics.jsonl") is not None:
            with open(self._path("metrics.jsonl"), "w") as handle:
                for record in self.history:
                    handle.write(json.dumps(record) + "\n")
        rng = ckpt["rng"]
        generators = {"aux": self._aux_gen}
        if "noise" in rng:
            generators["noise"] = self._noise_gen
        restore_rng_state(rng, **generators)
        if self.dist.enabled:
            per_rank = rng.get("rank_torch")
            if per_rank is not None and len(per_rank) == self.dist.world_size:
                torch.set_rng_state(per_rank[self.dist.rank])
            else:  # another world size: dropout streams restart (the run stays correct, not bitwise)
                torch.manual_seed(_derive_seed(self.cfg.seed, 4, self.global_step) + self.dist.rank)


def format_metrics_table(metrics: dict, title: str = "metrics") -> str:
    order = ["rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au", "probe_acc", "num_sentences", "num_tokens"]
    keys = [k for k in order if k in metrics] + [k for k in metrics if k not in order and k != "au_var"]
    width = max(len(k) for k in keys) if keys else 4
    lines = [title, "-" * max(len(title), width + 14)]
    for key in keys:
        value = metrics[key]
        text = f"{value:12.4f}" if isinstance(value, float) else f"{value!s:>12}"
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
