"""Batches: `<s> w1 .. wn </s>` rows padded with `<pad>`.

Two modes. "bucket" is the reference batching (recipes.md): sentences grouped by identical length,
so a batch has no padding, and the order of batches is shuffled each epoch. "padded" shuffles
sentences and pads; every loss and metric in fastvae masks padding, so both give the same loss on
the same sentences.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .corpus import TextDataset
from .vocab import BOS, EOS, PAD

BATCH_MODES = ("bucket", "padded")


@dataclass
class Batch:
    tokens: torch.Tensor           # [B, T] long: <s> w1 .. wn </s>, then <pad>
    lengths: torch.Tensor          # [B] long: n + 2
    labels: torch.Tensor | None    # [B] long
    indices: torch.Tensor          # [B] long: rows of the dataset
    num_target_tokens: int         # sum of (n + 1): the words and </s> that the decoder predicts

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.tokens), move(self.lengths), move(self.labels), move(self.indices),
                     self.num_target_tokens)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]


def collate(dataset: TextDataset, indices) -> Batch:
    indices = [int(i) for i in indices]
    sents = [dataset.sentences[i] for i in indices]
    lengths = torch.tensor([len(s) + 2 for s in sents], dtype=torch.long)
    tokens = torch.full((len(sents), int(lengths.max())), PAD, dtype=torch.long)
    for row, s in enumerate(sents):
        tokens[row, 0] = BOS
        tokens[row, 1:len(s) + 1] = s
        tokens[row, len(s) + 1] = EOS
    labels = dataset.labels[indices] if dataset.labels is not None else None
    return Batch(tokens, lengths, labels, torch.tensor(indices, dtype=torch.long), int(lengths.sum()) - len(sents))


def bucket_groups(lengths, batch_size: int, *, drop_last: bool = False) -> list[list[int]]:
    """The reference partition of a split (He et al.'s `create_data_batch`): row indices sorted by length
    (stably), each run of equal lengths cut into chunks of `batch_size` (the last chunk of a run may be
    smaller), in increasing length. Training shuffles the order of these groups; evaluation and the
    per-batch MI estimator use them as they are."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    order = torch.argsort(lengths, stable=True).tolist()
    sorted_lengths = lengths[order].tolist()
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or sorted_lengths[end] != sorted_lengths[start]:
            run = order[start:end]
            for i in range(0, len(run), batch_size):
                chunk = run[i:i + batch_size]
                if len(chunk) == batch_size or not drop_last:
                    groups.append(chunk)
            start = end
    return groups


def make_batches(dataset: TextDataset, batch_size: int, *, mode: str = "bucket", shuffle: bool = True,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> list[Batch]:
    """All batches of one epoch. Deterministic for a given generator state."""
    if mode not in BATCH_MODES:
        raise ValueError(f"unknown batch mode {mode!r}; choose one of {', '.join(BATCH_MODES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no sentences to batch")
    if mode == "bucket":
        groups = bucket_groups([len(s) for s in dataset.sentences], batch_size, drop_last=drop_last)
        if shuffle:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        return [collate(dataset, g) for g in groups]
    order = torch.randperm(len(dataset), generator=generator).tolist() if shuffle else list(range(len(dataset)))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    return [collate(dataset, c) for c in chunks]
