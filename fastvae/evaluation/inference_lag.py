"""He et al.'s picture of inference lag: the approximate posterior mean E_q[z|x] against the model's true
posterior mean E_p[z|x], for a fixed sample of sentences, as training goes.

With a 2-dimensional latent the true posterior p(z|x) ∝ N(z; 0, I) p(x|z) can be computed on a grid: the
posterior mean is the grid average of z weighted by exp(log N(z; 0, I) + log p(x|z)) (a softmax over the grid
points; the cells are equal, so their area cancels). Early in training the encoder lags behind the model's
posterior (the approximate means collapse towards 0 while the true ones spread out); He et al.'s aggressive
encoder updates close that gap, which is why the aggressive recipe does not collapse.
"""
from __future__ import annotations

import math

import torch

from ..data.batching import collate
from ..data.corpus import TextDataset


def latent_grid(extent: float = 4.0, points: int = 81, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The grid's z values, [points^2, 2], on [-extent, extent]^2."""
    if not (isinstance(extent, (int, float)) and math.isfinite(extent) and extent > 0):
        raise ValueError(f"latent_grid: extent must be a positive number, got {extent!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"latent_grid: points must be an int >= 2, got {points!r}")
    axis = torch.linspace(-extent, extent, points, device=device, dtype=dtype)
    return torch.cartesian_prod(axis, axis)


@torch.no_grad()
def true_posterior_mean(model, tokens: torch.Tensor, lengths: torch.Tensor, *, extent: float = 4.0,
                        points: int = 81, chunk: int = 1024) -> torch.Tensor:
    """E_p[z|x] for each sentence, [B, 2], from the model's decoder on a points x points grid over
    [-extent, extent]^2 (the prior's mass outside a 4-sigma square is below 1e-4). `chunk`: grid points decoded
    at a time."""
    if getattr(model, "latent_dim", None) != 2:
        raise ValueError(f"the true posterior is computed on a grid: it needs a 2-dimensional latent, the model has "
                         f"{getattr(model, 'latent_dim', None)} (train with the synthetic config)")
    device = next(model.parameters()).device
    grid = latent_grid(extent, points, device=device)
    log_joint = []
    for start in range(0, grid.shape[0], chunk):
        z = grid[start:start + chunk]
        z3 = z.unsqueeze(0).expand(tokens.shape[0], -1, -1)             # [B, M, 2]
        log_px_z = -model.reconstruction(tokens, lengths, z3).double()   # [B, M]
        log_joint.append(log_px_z - 0.5 * z.double().pow(2).sum(-1))    # + log N(z; 0, I) up to a constant
    weights = torch.softmax(torch.cat(log_joint, dim=1), dim=1)          # [B, grid]
    return (weights @ grid.double()).to(grid.dtype)


class PosteriorTracker:
    """A Trainer step callback: every `every` optimiser steps (and before the first), records the approximate
    and the true posterior means of `sentences` (a TextDataset, for example the first 50 validation sentences).

    `records`: a list of {"step", "approx" [n, 2], "true" [n, 2]} (CPU tensors). The model is evaluated in eval
    mode (no dropout) and put back; no random numbers are drawn, so training is unchanged."""

    def __init__(self, sentences: TextDataset, *, every: int = 20, extent: float = 4.0, points: int = 61):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"PosteriorTracker: every must be a positive int, got {every!r}")
        if len(sentences) < 1:
            raise ValueError("PosteriorTracker: no sentences to track")
        self.batch = collate(sentences, range(len(sentences)))
        self.every, self.extent, self.points = every, extent, points
        self.records: list[dict] = []

    def snapshot(self, model, step: int) -> None:
        was_training = model.training
        model.eval()
        try:
            batch = self.batch.to(next(model.parameters()).device)
            with torch.no_grad():
                approx, _ = model.encode(batch.tokens, batch.lengths)
            true = true_posterior_mean(model, batch.tokens, batch.lengths, extent=self.extent, points=self.points)
        finally:
            model.train(was_training)
        self.records.append({"step": int(step), "approx": approx.float().cpu(), "true": true.float().cpu()})

    def __call__(self, trainer) -> None:
        if not self.records:  # the untrained model too
            self.snapshot(trainer.model, 0)
        if trainer.global_step % self.every == 0:
            self.snapshot(trainer.model, trainer.global_step)

    def gaps(self) -> list[tuple[int, float]]:
        """(step, mean distance between the approximate and the true posterior means) per record."""
        return [(r["step"], float((r["approx"] - r["true"]).norm(dim=1).mean())) for r in self.records]


def plot_inference_lag(trackers: dict, path: str, *, panels: int = 4) -> str:
    """One row per tracker (recipe name -> PosteriorTracker): `panels` moments of training, each showing every
    sentence's approximate posterior mean (dot) joined to its true posterior mean (cross), and the mean gap over
    training in the last column. Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not trackers or any(not t.records for t in trackers.values()):
        raise ValueError("plot_inference_lag: every tracker needs at least one record (did training run?)")
    fig, axes = plt.subplots(len(trackers), panels + 1, figsize=(3.2 * (panels + 1), 3.2 * len(trackers)),
                             squeeze=False)
    # one scale for every panel: the 99th percentile of all coordinates (a stray point does not squash the rest)
    coords = torch.cat([torch.cat([r["true"], r["approx"]]).abs().flatten() for t in trackers.values()
                        for r in t.records])
    limit = max(float(torch.quantile(coords, 0.99)) * 1.15, 0.5)
    for row, (name, tracker) in enumerate(trackers.items()):
        records = tracker.records
        picks = sorted({round(i * (len(records) - 1) / max(panels - 1, 1)) for i in range(panels)})
        for col in range(panels):
            ax = axes[row, col]
            if col >= len(picks):
                ax.axis("off")
                continue
            r = records[picks[col]]
            for (ax_, ay_), (tx, ty) in zip(r["approx"].tolist(), r["true"].tolist()):
                ax.plot([ax_, tx], [ay_, ty], color="0.75", linewidth=0.7, zorder=1)
            ax.scatter(r["approx"][:, 0], r["approx"][:, 1], s=9, color="tab:blue", label="E_q[z|x] (encoder)",
                       zorder=2)
            ax.scatter(r["true"][:, 0], r["true"][:, 1], s=14, marker="x", color="tab:red",
                       label="E_p[z|x] (model)", zorder=3)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: step {r['step']}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="upper left")
        ax = axes[row, panels]
        steps, gaps = zip(*tracker.gaps())
        ax.plot(steps, gaps, color="tab:purple")
        ax.set_title(f"{name}: mean |E_q - E_p|", fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
