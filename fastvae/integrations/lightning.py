"""A Lightning callback that measures the papers' latent metrics after every validation epoch.

    from fastvae.integrations.lightning import LatentDiagnosticsCallback
    trainer = lightning.pytorch.Trainer(callbacks=[LatentDiagnosticsCallback()])

What your LightningModule must provide: `encode(tokens, lengths) -> (mu, logvar)`, each [B, nz], either on a
submodule named `model` (e.g. a fastvae `TextVAE` kept as `self.model`, looked at first) or itself; and a
validation dataloader whose batches are fastvae `Batch`es, `(tokens, lengths, ...)` tuples or dicts with "tokens"
and "lengths" (with several validation dataloaders, the first is measured unless `dataloader_idx` says otherwise).

After each validation epoch (not the sanity check) the callback encodes the whole validation dataloader once more
(eval mode, no grad; `limit_val_batches` does not apply to this pass), computes KL, KL per dimension, both MI
estimators and AU with `fastvae.diagnostics.LatentDiagnostics`, logs the scalars through `pl_module.log_dict`
as `latent/kl`, `latent/mi`, `latent/mi_batch`, `latent/au`, `latent/collapsed` (1.0 when AU is 0), keeps the
full records in `callback.diagnostics.history` (saved in Lightning checkpoints through the callback's state) and,
with `plot_path`, redraws fastvae's training figure. A change of the collapse verdict is logged as a warning by
the `fastvae.diagnostics` logger. Under a multi-process strategy every rank measures the rows of its own
validation shard; the figure is drawn by rank 0.
"""
from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # the framework is optional: say how to get it
    raise ImportError("fastvae.integrations.lightning needs Lightning, which is not installed: "
                      "pip install fastvae[lightning] (or pip install 'lightning>=2.0')") from error

from ..diagnostics import DEFAULT_AU_THRESHOLD, DEFAULT_MI_BATCH_SIZE, LatentDiagnostics

LOGGED_METRICS = ("kl", "mi", "mi_batch", "au", "collapsed")


class LatentDiagnosticsCallback(pl.Callback):
    """Runs `LatentDiagnostics` over the validation dataloader at the end of every validation epoch.

    `prefix`: the logged names' prefix. `plot_path`: a PNG redrawn after each measurement (None: no figure).
    `dataloader_idx`: which validation dataloader is measured when there are several (the first by default;
    None: all of them as one split). `au_threshold`, `mi_batch_size`: as in `LatentDiagnostics` (0.01 and 32,
    the papers')."""

    def __init__(self, *, prefix: str = "latent/", plot_path: str | None = None, dataloader_idx: int | None = 0,
                 au_threshold: float = DEFAULT_AU_THRESHOLD, mi_batch_size: int = DEFAULT_MI_BATCH_SIZE):
        super().__init__()
        if dataloader_idx is not None and (isinstance(dataloader_idx, bool) or not isinstance(dataloader_idx, int)
                                           or dataloader_idx < 0):
            raise ValueError(f"LatentDiagnosticsCallback: dataloader_idx must be None or an int >= 0, "
                             f"got {dataloader_idx!r}")
        self.prefix = prefix
        self.plot_path = plot_path
        self.dataloader_idx = dataloader_idx
        self.diagnostics = LatentDiagnostics(au_threshold=au_threshold, mi_batch_size=mi_batch_size)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:  # a couple of batches before training: not a measurement of the model
            return
        loaders = _validation_loaders(trainer, self.dataloader_idx)
        # batches of several loaders can share dataset indices: keep the loaders' order instead
        self.diagnostics.measure(_encoder_module(pl_module), _chain(loaders), use_indices=len(loaders) == 1)
        record = self.diagnostics.end_epoch(step=trainer.global_step, epoch=trainer.current_epoch)
        pl_module.log_dict({self.prefix + key: float(record[key]) for key in LOGGED_METRICS},
                           on_step=False, on_epoch=True)
        if self.plot_path is not None and trainer.is_global_zero:
            self.diagnostics.plot(self.plot_path, title=type(pl_module).__name__)

    def state_dict(self) -> dict[str, Any]:
        return self.diagnostics.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diagnostics.load_state_dict(state_dict)


def _encoder_module(pl_module):
    """The object whose `encode(tokens, lengths)` gives the posterior: `pl_module.model`, else the module."""
    inner = getattr(pl_module, "model", None)
    if inner is not None and callable(getattr(inner, "encode", None)):
        return inner
    if callable(getattr(pl_module, "encode", None)):
        return pl_module
    raise TypeError(f"LatentDiagnosticsCallback: {type(pl_module).__name__} has no encode(tokens, lengths) and no "
                    "`model` attribute with one; give the LightningModule a fastvae TextVAE as `self.model` or "
                    "an `encode` method returning (mu, logvar)")


def _validation_loaders(trainer, dataloader_idx: int | None) -> list:
    """The validation dataloaders to measure: the one at `dataloader_idx`, or all for None."""
    loaders = trainer.val_dataloaders
    if loaders is None:
        raise ValueError("LatentDiagnosticsCallback: the trainer has no validation dataloader to measure")
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    if dataloader_idx is None:
        return list(loaders)
    if dataloader_idx >= len(loaders):
        raise ValueError(f"LatentDiagnosticsCallback: dataloader_idx={dataloader_idx}, but the trainer has "
                         f"{len(loaders)} validation dataloader{'s' if len(loaders) > 1 else ''}")
    return [loaders[dataloader_idx]]


def _chain(loaders: list):
    for loader in loaders:
        yield from loader
