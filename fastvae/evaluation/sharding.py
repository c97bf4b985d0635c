"""Which sentences of an evaluation split each torchrun rank evaluates (`evaluate(..., distributed=ctx)`).

Pure index bookkeeping, no collectives: the all-reduce and the gather live in fastvae.training.distributed.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # fastvae.training imports fastvae.evaluation, so only for the annotations
    from ..training.distributed import DistContext


def bucket_shard_indices(lengths, batch_size: int, ctx: DistContext) -> torch.Tensor:
    """Sentence indices of this rank's evaluation shard.

    Sentences are ordered by length (stable), the reference's same-length batches of up to
    `batch_size` are formed, and the list of batches is cut into `world_size` contiguous runs of
    about equal sentence counts; each run is re-bucketed by the evaluator into exactly the batches
    one process forms (same sizes, same members), so per-batch quantities are unchanged."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    n = lengths.numel()
    order = torch.sort(lengths, stable=True).indices
    if not ctx.enabled:
        return order
    sorted_lengths = lengths[order].tolist()
    bounds = [0]  # start of every batch in `order`
    for i in range(1, n):
        if sorted_lengths[i] != sorted_lengths[i - 1] or i - bounds[-1] >= batch_size:
            bounds.append(i)
    bounds.append(n)
    starts = bounds[:-1]
    # cut at the batch start closest to rank * n / world
    cuts = [0]
    for r in range(1, ctx.world_size):
        target = n * r / ctx.world_size
        best = min(starts + [n], key=lambda s: (abs(s - target), s))
        cuts.append(max(best, cuts[-1]))
    cuts.append(n)
    return order[cuts[ctx.rank]:cuts[ctx.rank + 1]]


def subset_dataset(dataset, indices):
    """A shallow copy of a `TextDataset` holding only the sentences (and labels) at `indices`."""
    indices = [int(i) for i in indices]
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    part = copy.copy(dataset)
    part.sentences = [dataset.sentences[i] for i in indices]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        part.labels = labels[torch.as_tensor(indices, dtype=torch.long)] if indices else labels[:0]
    return part
