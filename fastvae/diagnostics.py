"""The papers' latent measurements for any training loop: KL per dimension, both MI estimators, AU, collapse.

`LatentDiagnostics` collects the posterior rows (mu, logvar) of a held-out pass, from any model and any loop,
and computes from them what `fastvae.evaluate` reports, with the same functions and the same conventions
(recipes.md, fastvae/evaluation/metrics.py):

  kl           analytic KL(q(z|x) || N(0, I)), mean per sentence (nats); `kl_per_dim` its share per dimension
  mi           whole-set mutual information (Li et al.): the aggregate posterior is every row of the pass
  mi_batch     per-batch mutual information (He et al.): the aggregate posterior is formed inside the reference
               batches of `mi_batch_size` (32) rows: equal lengths when `lengths` are given (as the evaluation
               forms them), else consecutive rows in the order they arrived; capped near log(mi_batch_size)
  au           active units: dimensions whose unbiased Var_x[mu(x)] >= `au_threshold` (0.01); `au_var`,
               `active_dims`
  collapsed    AU == 0, the papers' verdict on posterior collapse

Rows given with their dataset `indices` (a fastvae `Batch` carries them) are put back in dataset order, so a
pass over a split's batches gives `fastvae.evaluate`'s numbers (the same draws when the generator is in the same
state). A loop calls `measure(model, valid_batches)` or `update(...)` per batch, then `end_epoch(step=...)`
once per epoch: that keeps a history, logs a warning to the `fastvae.diagnostics` logger when the posterior
collapses (and when it recovers), and `plot(path)` draws the Trainer's figure from it.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch

from . import functional as F
from .evaluation.metrics import (DEFAULT_MI_BATCH_SIZE, _EvalMode, check_mi_batch_size,
                                 per_batch_mutual_information)

log = logging.getLogger("fastvae.diagnostics")

DEFAULT_AU_THRESHOLD = 0.01  # recipes.md: a dimension is active when Var_x[mu] >= 0.01
METRIC_KEYS = ("kl", "kl_per_dim", "mi", "mi_batch", "au", "au_var", "active_dims", "collapsed", "num_sentences")
RECORD_KEYS = ("split", "step", "epoch") + METRIC_KEYS
STATE_VERSION = 1


class LatentDiagnostics:
    """Accumulates a held-out pass's posterior rows and turns them into the papers' latent metrics.

    `au_threshold`: the variance above which a dimension counts as active (0.01, recipes.md).
    `mi_batch_size`: the per-batch MI estimator's batch (32, He et al.'s), independent of the loop's batch size.
    """

    def __init__(self, *, au_threshold: float = DEFAULT_AU_THRESHOLD, mi_batch_size: int = DEFAULT_MI_BATCH_SIZE):
        if isinstance(au_threshold, bool) or not isinstance(au_threshold, (int, float)) or not au_threshold >= 0:
            raise ValueError(f"au_threshold must be a number >= 0 (0.01 in the papers), got {au_threshold!r}")
        self.au_threshold = float(au_threshold)
        self.mi_batch_size = check_mi_batch_size(mi_batch_size)
        self.history: list[dict] = []
        self.collapsed: bool | None = None  # the verdict of the latest end_epoch; None before the first
        self.reset()

    # ------------------------------------------------------------------ accumulating one pass
    def reset(self) -> None:
        """Forget the rows collected so far (the history stays)."""
        self._mu: list[torch.Tensor] = []
        self._logvar: list[torch.Tensor] = []
        self._lengths: list[int] | None = None
        self._indices: list[torch.Tensor] | None = None
        self._kl_total: torch.Tensor | None = None     # float64 sum over rows and dimensions, as evaluate sums it
        self._kl_per_dim: torch.Tensor | None = None   # float64 [nz] sums over rows
        self._num_rows = 0
        self._calls = 0
        self._latest: dict | None = None  # compute()'s result for the rows as they are now

    @property
    def num_sentences(self) -> int:
        return self._num_rows

    def update(self, mu: torch.Tensor, logvar: torch.Tensor, lengths=None, *, indices=None) -> None:
        """Adds one batch of posterior rows, [B, nz] each (detached; float32, or float64 when given float64).

        `lengths`: the B sentence lengths (any constant offset, e.g. with `<s>`/`</s>`, gives the same batches);
        they decide the per-batch MI's reference batches. `indices`: the rows' positions in the split, to put
        them back in its order. Give each in every call of a pass or in none."""
        self._calls += 1
        call = f"update call {self._calls}"
        mu, logvar = self._check_posterior(call, mu, logvar)
        batch = mu.shape[0]
        lengths_list = self._check_lengths(call, lengths, batch)
        index_tensor = self._check_indices(call, indices, batch)
        self._check_consistent(call, "lengths", lengths_list is not None, self._lengths is not None)
        self._check_consistent(call, "indices", index_tensor is not None, self._indices is not None)
        if batch == 0:
            return
        kl = F.kl_per_dim(mu, logvar).double()
        if self._kl_total is None or self._kl_per_dim is None:
            self._kl_total = torch.zeros((), dtype=torch.float64, device=mu.device)
            self._kl_per_dim = torch.zeros(mu.shape[1], dtype=torch.float64, device=mu.device)
        # out of place: a pass may start under torch.inference_mode() (Lightning's validation) and go on outside
        self._kl_total = self._kl_total + kl.sum()
        self._kl_per_dim = self._kl_per_dim + kl.sum(0)
        dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
        if self._mu:
            dtype = self._mu[0].dtype  # the first batch decides, so the rows concatenate
        # copies: a caller that reuses its output buffers must not change the rows already collected
        self._mu.append(mu.to(dtype=dtype, copy=True))
        self._logvar.append(logvar.to(dtype=dtype, copy=True))
        if lengths_list is not None:
            self._lengths = self._lengths if self._lengths is not None else []
            self._lengths.extend(lengths_list)
        if index_tensor is not None:
            self._indices = self._indices if self._indices is not None else []
            self._indices.append(index_tensor)
        self._num_rows += batch
        self._latest = None

    def _check_posterior(self, call: str, mu, logvar) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x in (("mu", mu), ("logvar", logvar)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"LatentDiagnostics.update ({call}): {name} must be a torch.Tensor, "
                                f"got {type(x).__name__}")
            if not x.dtype.is_floating_point:
                raise TypeError(f"LatentDiagnostics.update ({call}): {name} must have a floating dtype, got {x.dtype}")
            if x.dim() != 2:
                raise ValueError(f"LatentDiagnostics.update ({call}): {name} must have shape [batch, latent_dim], "
                                 f"got shape {tuple(x.shape)}")
        if mu.shape != logvar.shape:
            raise ValueError(f"LatentDiagnostics.update ({call}): mu and logvar must have the same shape, got "
                             f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
        if mu.device != logvar.device:
            raise ValueError(f"LatentDiagnostics.update ({call}): mu is on {mu.device} but logvar on {logvar.device}")
        if mu.shape[1] == 0:
            raise ValueError(f"LatentDiagnostics.update ({call}): latent_dim is 0 (shape {tuple(mu.shape)})")
        if self._mu:
            first = self._mu[0]
            if mu.shape[1] != first.shape[1]:
                raise ValueError(f"LatentDiagnostics.update ({call}): latent_dim changed from {first.shape[1]} to "
                                 f"{mu.shape[1]} within one pass; call reset() between models")
            if mu.device != first.device:
                raise ValueError(f"LatentDiagnostics.update ({call}): rows moved from {first.device} to "
                                 f"{mu.device} within one pass; give every batch on one device")
        mu, logvar = mu.detach(), logvar.detach()
        for name, x in (("mu", mu), ("logvar", logvar)):
            bad = int((~torch.isfinite(x)).sum())  # one host sync per batch of a held-out pass
            if bad:
                raise ValueError(f"LatentDiagnostics.update ({call}): {name} has {bad} non-finite value"
                                 f"{'s' if bad > 1 else ''} (NaN/inf) of {x.numel()}: the encoder has diverged or "
                                 f"the rows are not a posterior's")
        return mu, logvar

    @staticmethod
    def _check_lengths(call: str, lengths, batch: int) -> list[int] | None:
        if lengths is None:
            return None
        if isinstance(lengths, torch.Tensor):
            if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
                raise ValueError(f"LatentDiagnostics.update ({call}): lengths must be a 1-D integer tensor, got "
                                 f"shape {tuple(lengths.shape)} of {lengths.dtype}")
            values = [int(v) for v in lengths.tolist()]
        else:
            values = list(lengths)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ValueError(f"LatentDiagnostics.update ({call}): lengths must be integers, got {values[:8]!r}")
        if len(values) != batch:
            raise ValueError(f"LatentDiagnostics.update ({call}): {len(values)} lengths for {batch} rows of mu")
        if any(v < 0 for v in values):
            raise ValueError(f"LatentDiagnostics.update ({call}): lengths must be >= 0, got {min(values)}")
        return values

    @staticmethod
    def _check_indices(call: str, indices, batch: int) -> torch.Tensor | None:
        if indices is None:
            return None
        index_tensor = torch.as_tensor(indices).detach().cpu()
        if index_tensor.dim() != 1 or index_tensor.dtype.is_floating_point or index_tensor.dtype == torch.bool:
            raise ValueError(f"LatentDiagnostics.update ({call}): indices must be 1-D integers, got shape "
                             f"{tuple(index_tensor.shape)} of {index_tensor.dtype}")
        if index_tensor.numel() != batch:
            raise ValueError(f"LatentDiagnostics.update ({call}): {index_tensor.numel()} indices for {batch} rows")
        return index_tensor.long()

    def _check_consistent(self, call: str, what: str, given: bool, given_before: bool) -> None:
        if self._num_rows and given != given_before:
            before = "with" if given_before else "without"
            raise ValueError(f"LatentDiagnostics.update ({call}): earlier batches of this pass came {before} {what}; "
                             f"give {what} in every update of a pass or in none")

    # ------------------------------------------------------------------ the metrics
    def compute(self, *, generator: torch.Generator | None = None) -> dict:
        """The metrics of the rows collected since the last reset (module docstring), as Python values.

        The two MI estimators draw one z per row, whole-set MI first, then per-batch MI, from `generator` when
        given (a torch.Generator on the rows' device), as `fastvae.evaluate` does in one process."""
        if self._num_rows < 2:
            raise ValueError(f"LatentDiagnostics.compute: {self._num_rows} posterior row"
                             f"{'' if self._num_rows == 1 else 's'} collected; active units need at least 2 "
                             "(call update() or measure() first)")
        assert self._kl_total is not None and self._kl_per_dim is not None
        mu, logvar, lengths = self._rows_in_order()
        n = mu.shape[0]
        with torch.no_grad():
            # the evaluation's order of draws: whole-set MI, then per-batch MI
            mi = F.mutual_information(mu, logvar, generator=generator)
            mi_batch = per_batch_mutual_information(mu, logvar, lengths, self.mi_batch_size, generator=generator)
            au, au_var = F.active_units(mu, threshold=self.au_threshold)
        au_var_list = [float(v) for v in au_var]
        result = {
            "kl": float(self._kl_total) / n,
            "kl_per_dim": [v / n for v in self._kl_per_dim.tolist()],
            "mi": float(mi),
            "mi_batch": float(mi_batch),
            "au": int(au),
            "au_var": au_var_list,
            "active_dims": [j for j, v in enumerate(au_var_list) if v >= self.au_threshold],
            "collapsed": int(au) == 0,
            "num_sentences": n,
        }
        self._latest = result
        return copy.deepcopy(result)

    def _rows_in_order(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(mu, logvar, lengths) of the pass: in dataset order when indices came with the rows."""
        mu, logvar = torch.cat(self._mu), torch.cat(self._logvar)
        lengths = self._lengths if self._lengths is not None else [0] * mu.shape[0]  # one run: consecutive chunks
        if self._indices is not None:
            indices = torch.cat(self._indices)
            if torch.unique(indices).numel() != indices.numel():
                raise ValueError(f"LatentDiagnostics.compute: the rows' indices repeat ({indices.numel()} rows, "
                                 f"{torch.unique(indices).numel()} distinct indices): a sentence was given twice, "
                                 "or batches of two datasets were mixed (pass use_indices=False to measure)")
            order = torch.argsort(indices)
            lengths = [lengths[i] for i in order.tolist()]
            order = order.to(mu.device)
            mu, logvar = mu[order], logvar[order]
        return mu, logvar, lengths

    def measure(self, model: Any, batches: Iterable, *, generator: torch.Generator | None = None,
                use_indices: bool = True) -> dict:
        """A fresh pass: encodes every batch (no grad, eval mode, the model's training flag restored), then
        compute(). `model`: anything with `encode(tokens, lengths) -> (mu, logvar)`, or such a function.
        `batches`: fastvae `Batch`es (their `indices` restore dataset order unless `use_indices=False`),
        `(tokens, lengths, ...)` tuples, or dicts with "tokens" and "lengths"."""
        encode, context, device = _encoder_of(model)
        self.reset()
        with context:
            for position, batch in enumerate(batches):
                tokens, lengths, indices = _unpack_batch(batch, position)
                lengths = torch.as_tensor(lengths)  # a list of ints in a user's tuple batch
                if device is not None:
                    tokens, lengths = tokens.to(device), lengths.to(device)
                mu, logvar = encode(tokens, lengths)
                self.update(mu, logvar, lengths, indices=indices if use_indices else None)
        return self.compute(generator=generator)

    # ------------------------------------------------------------------ once per epoch: history and verdict
    def end_epoch(self, *, step: int | None = None, epoch: int | None = None, **extra) -> dict:
        """Closes the pass: its metrics (the last compute()'s when no row came since) become a validation record
        of the history, a change of the collapse verdict is logged, and the rows are cleared for the next pass.

        `step` (the x axis of plot(); default `epoch`, else the number of records so far) and `extra` values
        (e.g. `elbo=`, `nll=`, `phase=` from your own validation, which plot() draws too) go into the record."""
        clash = sorted(set(extra) & set(RECORD_KEYS))
        if clash:
            raise ValueError(f"LatentDiagnostics.end_epoch: {clash} are the diagnostics' own record keys; "
                             "pass them under other names")
        metrics = self._latest if self._latest is not None else self.compute()
        if step is None:
            step = epoch if epoch is not None else sum(r.get("split") == "valid" for r in self.history)
        record = {"split": "valid", "step": step, "epoch": epoch, **copy.deepcopy(metrics), **extra}
        self.history.append(record)
        self._report_transition(record)
        self.reset()
        return copy.deepcopy(record)

    def record_training(self, *, step: int, **metrics) -> None:
        """Adds a training record (e.g. `kl=`, `elbo=` averaged over the epoch) for plot()'s training lines."""
        if "split" in metrics:
            raise ValueError("LatentDiagnostics.record_training: 'split' is set by the method")
        self.history.append({"split": "train", "step": step, **metrics})

    def _report_transition(self, record: dict) -> None:
        collapsed = bool(record["collapsed"])
        where = f"step {record['step']}" + (f" (epoch {record['epoch']})" if record.get("epoch") is not None else "")
        dims = len(record["au_var"])
        if collapsed and not self.collapsed:
            log.warning(f"posterior collapse at {where}: no active unit (AU 0 of {dims} dimensions at "
                        f"Var_x[mu] >= {self.au_threshold:g}); KL {record['kl']:.4g} nats, MI {record['mi']:.4g} "
                        f"nats (whole set), {record['mi_batch']:.4g} (per batch)")
        elif self.collapsed and not collapsed:
            log.warning(f"posterior no longer collapsed at {where}: AU {record['au']} of {dims} dimensions; "
                        f"KL {record['kl']:.4g} nats, MI {record['mi']:.4g} nats (whole set)")
        self.collapsed = collapsed

    # ------------------------------------------------------------------ figure and resuming
    def plot(self, path: str, title: str = "") -> None:
        """Writes the Trainer's training figure (KL, MI, AU, ELBO/NLL over steps) from the history."""
        if not self.history:
            raise ValueError("LatentDiagnostics.plot: the history is empty (call end_epoch() first)")
        from .training.plots import plot_history

        plot_history(self.history, path, title=title)

    def state_dict(self) -> dict:
        """The history and the collapse verdict (plain Python values), so a resumed loop carries on."""
        return {"version": STATE_VERSION, "history": copy.deepcopy(self.history), "collapsed": self.collapsed,
                "au_threshold": self.au_threshold, "mi_batch_size": self.mi_batch_size}

    def load_state_dict(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or not {"history", "collapsed"} <= set(state):
            raise ValueError("LatentDiagnostics.load_state_dict: expected the dict of state_dict() with 'history' "
                             f"and 'collapsed', got {type(state).__name__} with keys "
                             f"{sorted(state) if isinstance(state, Mapping) else '-'}")
        history = state["history"]
        if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
            raise ValueError("LatentDiagnostics.load_state_dict: 'history' must be a list of dicts")
        if state["collapsed"] not in (None, True, False):
            raise ValueError(f"LatentDiagnostics.load_state_dict: 'collapsed' must be None or a bool, "
                             f"got {state['collapsed']!r}")
        for option in ("au_threshold", "mi_batch_size"):
            saved = state.get(option)
            if saved is not None and not math.isclose(float(saved), float(getattr(self, option))):
                log.warning(f"resuming diagnostics measured with {option}={saved}, now {getattr(self, option)}: "
                            "records before and after differ in that setting")
        self.history = [dict(r) for r in copy.deepcopy(history)]
        self.collapsed = state["collapsed"]


def _encoder_of(model) -> tuple[Callable, Any, torch.device | None]:
    """(encode function, context to run it in, device to move batches to) for a model or an encode function."""
    encode: Callable | None = getattr(model, "encode", None)
    if callable(encode):
        if isinstance(model, torch.nn.Module):
            parameter = next(model.parameters(), None)
            return encode, _EvalMode(model), parameter.device if parameter is not None else None
        return encode, torch.no_grad(), None
    if callable(model):
        return model, torch.no_grad(), None
    raise TypeError(f"LatentDiagnostics.measure: expected a model with encode(tokens, lengths) or such a function, "
                    f"got {type(model).__name__}")


def _unpack_batch(batch, position: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(tokens, lengths, indices or None) of a fastvae Batch, a (tokens, lengths, ...) sequence or a dict."""
    if hasattr(batch, "tokens") and hasattr(batch, "lengths"):
        return batch.tokens, batch.lengths, getattr(batch, "indices", None)
    if isinstance(batch, Mapping) and "tokens" in batch and "lengths" in batch:
        return batch["tokens"], batch["lengths"], batch.get("indices")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1], None
    raise TypeError(f"LatentDiagnostics.measure: batch {position} is a {type(batch).__name__}; expected a fastvae "
                    "Batch, a (tokens, lengths) tuple or a dict with 'tokens' and 'lengths'")
