"""KL objectives: how the KL term enters the training loss (plain, beta-scaled, free bits).

All of them log the unmasked KL; only the term that is optimised differs (recipes.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import functional as F
from ..kernels.free_bits import FREE_BITS_MODES


@dataclass
class KLObjective:
    """loss = mean_i rec_i + weight * scale * KLterm(mu, logvar).

    mode/target: the free-bits variant of `fastvae.functional.free_bits_kl` ("none" = plain KL);
    scale: a constant factor on the KL term (beta of a beta-VAE; 1 otherwise).
    """

    mode: str = "none"
    target: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if self.mode not in FREE_BITS_MODES:
            raise ValueError(f"unknown free-bits mode {self.mode!r}: expected one of {', '.join(FREE_BITS_MODES)}")
        for name in ("target", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"KL objective {name} must be a finite number >= 0, got {value!r}")
        if self.mode == "none" and self.target != 0:
            raise ValueError(f"a free-bits target ({self.target}) needs a free-bits mode "
                             f"(one of {', '.join(FREE_BITS_MODES[1:])}); mode is 'none'")
        if self.mode != "none" and self.target <= 0:
            raise ValueError(f"free-bits mode {self.mode!r} needs a target > 0 (nats per sentence), got {self.target}")

    def sample(self, mu, logvar, generator=None, noise=None):
        """(z [B, D], KL term to optimise (scalar, batch mean, times `scale`), unmasked KL per dim [D]).

        `noise`: the eps [B, 1, D] to use instead of drawing it (distributed training hands each
        rank its rows of the global batch's draw); same fused op, same math."""
        z, kl_term, kl_dim = F.sample_and_kl(mu, logvar, 1, self.target, self.mode, generator=generator, eps=noise)
        if self.scale != 1.0:
            kl_term = kl_term * self.scale
        return z, kl_term, kl_dim

    def describe(self) -> dict:
        return {"mode": self.mode, "target": self.target, "scale": self.scale}
