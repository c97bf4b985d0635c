"""Optimisation as in the reference code: separate encoder/decoder optimisers, clip, decay-on-plateau."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 1.0, "adam": 1e-3}


def _fused_supported(params) -> bool:
    """torch's fused Adam kernel takes float CPU and CUDA tensors (one kernel for all parameters: on a
    2-core CPU it is ~4x faster than the per-parameter loop, a quarter of a ptb-size training step)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(name: str, params, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in params]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=_fused_supported(params) or None)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


class PlateauDecay:
    """The references' learning-rate decay, with its bookkeeping kept separate from model selection.

    After each epoch's validation loss `value` (lower is better):
      if value > plateau_best: not_improved += 1, and when not_improved >= patience and
          epoch >= min_epoch: lr *= factor, plateau_best = value, not_improved = 0, decays += 1,
          and the caller reloads the best checkpoint and builds new optimisers;
      else: not_improved = 0, plateau_best = value.
    Training stops once decays == max_decays. (He et al.: patience 2; Li et al.: 5; min_epoch 15,
    factor 0.5, max_decays 5. `epoch` is 0-based as in the reference loops.) With `enabled=False` the
    rate is never decayed (Fu et al.'s PTB script: its schedule is the cosine restart per cycle).
    """

    def __init__(self, lr: float, patience: int = 2, factor: float = 0.5, min_epoch: int = 15, max_decays: int = 5,
                 enabled: bool = True):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"decay patience must be an int >= 1 (epochs), got {patience!r}")
        if not (0 < factor < 1):
            raise ValueError(f"decay factor must lie in (0, 1), got {factor!r}")
        if not (isinstance(max_decays, int) and max_decays >= 1):
            raise ValueError(f"max decays must be an int >= 1, got {max_decays!r}")
        if not (isinstance(min_epoch, int) and min_epoch >= 0):
            raise ValueError(f"decay min epoch must be an int >= 0, got {min_epoch!r}")
        self.lr, self.patience, self.factor = float(lr), patience, factor
        self.min_epoch, self.max_decays = min_epoch, max_decays
        self.enabled = bool(enabled)
        self.plateau_best = math.inf
        self.not_improved = 0
        self.decays = 0

    @property
    def finished(self) -> bool:
        return self.decays >= self.max_decays

    def update(self, value: float, epoch: int) -> bool:
        """Records one validation value; returns True when the learning rate was just decayed."""
        if not self.enabled:
            return False
        if value > self.plateau_best:
            self.not_improved += 1
            if self.not_improved >= self.patience and epoch >= self.min_epoch:
                self.plateau_best = value
                self.not_improved = 0
                self.lr *= self.factor
                self.decays += 1
                return True
        else:
            self.not_improved = 0
            self.plateau_best = value
        return False

    def state_dict(self) -> dict:
        return {"lr": self.lr, "plateau_best": self.plateau_best, "not_improved": self.not_improved,
                "decays": self.decays}

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state["lr"])
        self.plateau_best = float(state["plateau_best"])
        self.not_improved = int(state["not_improved"])
        self.decays = int(state["decays"])


def sparse_embedding_gradients_apply(optimizer_name: str, momentum: float, distributed: bool) -> bool:
    """Whether embeddings may produce row-sparse gradients: plain SGD (momentum 0) on one process, whose update
    `p -= lr * g` touches only the rows a batch used and equals the dense update (Adam's moments and momentum
    buffers are dense by definition; the gradient all-reduce of torchrun needs dense tensors)."""
    return optimizer_name == "sgd" and momentum == 0 and not distributed


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2, foreach) that also takes row-sparse gradients (sparse embeddings):
    a sparse gradient is coalesced (duplicate rows summed, as the dense gradient sums them) and its norm is
    that of its values, so the total norm and the scaled gradients equal the dense computation's up to the
    summation order. Returns the total norm."""
    params = [p for p in params if p.grad is not None]
    sparse = [p for p in params if p.grad.is_sparse]
    if not sparse:
        foreach = True if all(p.device.type in ("cpu", "cuda") for p in params) else None
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach)
    for p in sparse:
        p.grad = p.grad.coalesce()
    dense = [p.grad for p in params if not p.grad.is_sparse]
    norms = list(torch._foreach_norm(dense)) if dense else []
    norms += [torch.linalg.vector_norm(p.grad._values()) for p in sparse]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if dense:
        torch._foreach_mul_(dense, coef)
    for p in sparse:
        p.grad._values().mul_(coef)
    return total
