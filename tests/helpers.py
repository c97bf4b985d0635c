"""Helpers shared by test files (pytest puts tests/ on sys.path: `from helpers import ...`)."""
import torch


def away_from_thresholds(kl, target, gap=1e-4) -> bool:
    """Every quantity a free-bits mask compares (KL_ij, KL_i, batch means) is > gap from every threshold."""
    dims = kl.shape[1]
    compared = torch.cat([kl.flatten(), kl.sum(1), kl.mean(0), kl.sum(1).mean().view(1)])
    thresholds = torch.tensor([target / dims, target, kl.sum(1).mean().item()], dtype=kl.dtype)
    own_mean = kl.sum(1).mean()
    distance = (compared[:, None] - thresholds[None, :]).abs()
    distance[-1, 2] = 1.0  # the batch mean compared with itself
    return bool(distance.min() > gap) and bool((kl.sum(1) - own_mean).abs().min() > gap)
