"""Module forms of the latent-variable terms: a Gaussian latent layer and an ELBO loss.

Both are thin layers over `fastvae.functional` (fused kernels on CUDA, torch elsewhere). The
free-bits modes and their value/gradient semantics are those of `fastvae.functional.free_bits_kl`
(written out there); the KL reported for logging and model selection is always the unmasked KL.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as torch_f

from .. import functional as F


def _check_weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"kl_weight must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class LatentOutput:
    """What GaussianLatent returns.

    z: samples [B, D] (nsamples=1) or [B, K, D] (mu itself when sampling is off);
    mu, logvar: [B, D]; kl_term: kl_weight * free-bits KL (scalar; add it to the loss);
    kl: the unmasked KL per sentence, batch mean (scalar, detached: log this);
    kl_per_dim: the unmasked KL per dimension, batch mean [D] (detached)."""
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    kl_term: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor


class GaussianLatent(nn.Module):
    """Linear(in_features, 2 * latent_dim) -> (mu, logvar) -> reparameterised z, plus the KL term.

    bias=False matches the reference encoders. `free_bits_mode` and `target` select
    the free-bits variant (see fastvae.functional.free_bits_kl); `kl_weight` (settable at any
    time, e.g. by an annealing schedule) scales the KL term."""

    def __init__(self, in_features: int, latent_dim: int, *, bias: bool = False, free_bits_mode: str = "none",
                 target: float = 0.0, kl_weight: float = 1.0):
        super().__init__()
        if in_features < 1 or latent_dim < 1:
            raise ValueError(f"GaussianLatent: in_features and latent_dim must be >= 1, got {in_features}, "
                             f"{latent_dim}")
        self.in_features = in_features
        self.latent_dim = latent_dim
        self.proj = nn.Linear(in_features, 2 * latent_dim, bias=bias)
        self.target = F._check_free_bits("GaussianLatent", target, free_bits_mode)
        self.free_bits_mode = free_bits_mode
        self.kl_weight = kl_weight

    @property
    def kl_weight(self) -> float:
        return self._kl_weight

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self._kl_weight = _check_weight(value)

    def posterior(self, h: torch.Tensor):
        """(mu, logvar), each [B, latent_dim], from features h [B, in_features]."""
        if h.dim() != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"GaussianLatent: input must be [batch, {self.in_features}], got {tuple(h.shape)}")
        mu, logvar = self.proj(h).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, h: torch.Tensor, nsamples: int = 1, *, sample: bool = True, generator=None) -> LatentOutput:
        mu, logvar = self.posterior(h)
        z, kl_loss, kl_per_dim = F.sample_and_kl(mu, logvar, nsamples, self.target, self.free_bits_mode,
                                                 generator=generator)
        if not sample:  # deterministic code (e.g. evaluation, generation from the mean)
            z = mu if nsamples == 1 else mu.unsqueeze(1).expand(-1, nsamples, -1)
        return LatentOutput(z=z, mu=mu, logvar=logvar, kl_term=self.kl_weight * kl_loss,
                            kl=kl_per_dim.sum(), kl_per_dim=kl_per_dim)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, latent_dim={self.latent_dim}, free_bits_mode="
                f"{self.free_bits_mode!r}, target={self.target}, kl_weight={self.kl_weight}")


@dataclass
class ELBOOutput:
    """What ELBOLoss returns (all scalars, per-sentence batch means).

    loss: rec + kl_weight * free-bits KL (backpropagate this); rec: -log p(x|z) summed over
    non-pad target tokens (averaged over samples when z had K of them); kl: unmasked KL; kl_term:
    the free-bits KL before weighting; elbo: the true negative ELBO rec + kl (weight 1, no free
    bits; detached: use it for model selection)."""
    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_term: torch.Tensor
    elbo: torch.Tensor


class ELBOLoss(nn.Module):
    """Negative ELBO with free bits and a KL weight, from decoder logits and the posterior.

    forward(logits [B, T, V] or [B, K, T, V], targets [B, T] long, mu [B, D], logvar [B, D])
    -> ELBOOutput. Target positions equal to `pad_id` are masked out of the reconstruction
    (variable-length batches); with bucketed batches (no padding) nothing is masked, as in the
    reference code."""

    def __init__(self, *, free_bits_mode: str = "none", target: float = 0.0, kl_weight: float = 1.0,
                 pad_id: int = 0):
        super().__init__()
        self.target = F._check_free_bits("ELBOLoss", target, free_bits_mode)
        self.free_bits_mode = free_bits_mode
        self.pad_id = pad_id
        self.kl_weight = kl_weight

    @property
    def kl_weight(self) -> float:
        return self._kl_weight

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self._kl_weight = _check_weight(value)

    def reconstruction(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(targets | z) summed over non-pad positions: [B] (or [B, K] for [B, K, T, V] logits)."""
        if targets.dim() != 2 or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ELBOLoss: targets must be [batch, time] integer ids, got {tuple(targets.shape)} "
                             f"{targets.dtype}")
        if logits.dim() == 3:
            expanded = targets
        elif logits.dim() == 4:
            expanded = targets.unsqueeze(1).expand(-1, logits.shape[1], -1)
        else:
            raise ValueError(f"ELBOLoss: logits must be [B, T, V] or [B, K, T, V], got {tuple(logits.shape)}")
        if logits.shape[0] != targets.shape[0] or logits.shape[-2] != targets.shape[1]:
            raise ValueError(f"ELBOLoss: logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
        vocab = logits.shape[-1]
        nll = torch_f.cross_entropy(logits.reshape(-1, vocab).float(), expanded.reshape(-1).long(),
                                    reduction="none", ignore_index=self.pad_id)
        return nll.view(expanded.shape).sum(dim=-1)

    def forward(self, logits, targets, mu, logvar) -> ELBOOutput:
        rec = self.reconstruction(logits, targets)
        if rec.dim() == 2:
            rec = rec.mean(dim=1)  # average over the K samples
        return self.from_reconstruction(rec, mu, logvar)

    def from_reconstruction(self, rec: torch.Tensor, mu, logvar) -> ELBOOutput:
        """The ELBO pieces from a per-sentence reconstruction loss rec [B] (e.g. TextVAE.reconstruction)."""
        if rec.dim() != 1 or rec.shape[0] != mu.shape[0]:
            raise ValueError(f"ELBOLoss: rec must be [batch] with batch {mu.shape[0]}, got {tuple(rec.shape)}")
        kl_term = F.free_bits_kl(mu, logvar, self.target, self.free_bits_mode)
        kl = F.free_bits_kl(mu.detach(), logvar.detach(), 0.0, "none")  # unmasked, compute dtype
        rec_mean = rec.mean()
        return ELBOOutput(loss=rec_mean + self.kl_weight * kl_term, rec=rec_mean, kl=kl, kl_term=kl_term,
                          elbo=(rec_mean.detach() + kl))

    def extra_repr(self) -> str:
        return (f"free_bits_mode={self.free_bits_mode!r}, target={self.target}, kl_weight={self.kl_weight}, "
                f"pad_id={self.pad_id}")
