"""Helpers shared by test files (pytest puts tests/ on sys.path: `from helpers import ...`)."""
import pytest
import torch


def fit_until_killed(trainer, at_call: int) -> None:
    """Runs `trainer.fit()` until its `at_call`-th loss computation raises KeyboardInterrupt: a run killed mid-way,
    leaving the checkpoints it wrote before for a resume to find."""
    real, calls = trainer.compute_loss, {"n": 0}

    def dies(batch, kl_weight):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(batch, kl_weight)

    trainer.compute_loss = dies
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def away_from_thresholds(kl, target, gap=1e-4) -> bool:
    """Every quantity a free-bits mask compares (KL_ij, KL_i, batch means) is > gap from every threshold."""
    dims = kl.shape[1]
    compared = torch.cat([kl.flatten(), kl.sum(1), kl.mean(0), kl.sum(1).mean().view(1)])
    thresholds = torch.tensor([target / dims, target, kl.sum(1).mean().item()], dtype=kl.dtype)
    own_mean = kl.sum(1).mean()
    distance = (compared[:, None] - thresholds[None, :]).abs()
    distance[-1, 2] = 1.0  # the batch mean compared with itself
    return bool(distance.min() > gap) and bool((kl.sum(1) - own_mean).abs().min() > gap)


def separating_target(row_kl: torch.Tensor) -> float:
    """A free-bits target inside the widest relative gap between two per-row KLs, so some rows are
    masked and some kept, and no float32 rounding can move a row across it. It sits at 0.3 of the gap,
    not at its middle: with two rows the middle is the batch mean, which the `batch` mode compares with
    the target (an exact tie, decided by rounding)."""
    rows = row_kl.double().sort().values
    if rows.numel() == 1:
        return 0.5 * float(rows[0])
    gaps = (rows[1:] - rows[:-1]) / rows[1:].abs().clamp_min(1.0)
    at = int(gaps.argmax())
    return float(rows[at] + 0.3 * (rows[at + 1] - rows[at]))


def assert_error_within_pytorch_bf16(names, ours, pytorch_bf16, exact, norm_factor, max_factor=None):
    """Each of `ours` is as close to `exact` (float64) as PyTorch's own bf16 result: the error norm within
    `norm_factor` times PyTorch's, and with `max_factor` the largest element's error too."""
    for name, a, b, e in zip(names, ours, pytorch_bf16, exact):
        a, b, e = a.double().cpu(), b.double().cpu(), e.double().cpu()
        mine, theirs = (a - e).norm().item(), (b - e).norm().item()
        assert mine <= norm_factor * theirs + 1e-6, f"{name}: bf16 error norm {mine:.3g} vs PyTorch bf16 {theirs:.3g}"
        if max_factor is not None:
            mine, theirs = (a - e).abs().max().item(), (b - e).abs().max().item()
            assert mine <= max_factor * theirs + 1e-6, f"{name}: largest bf16 error {mine:.3g} vs PyTorch {theirs:.3g}"
