"""The vocabulary: special tokens first, then the training words by frequency (ties alphabetical)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class Vocab:
    """Maps words to ids and back. Ids 0..3 are `<pad>`, `<s>`, `</s>`, `<unk>`."""

    def __init__(self, itos: Iterable[str]):
        itos = list(itos)
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"Vocab: the first four tokens must be {SPECIALS}, got {tuple(itos[:4])}")
        if len(set(itos)) != len(itos):
            dup = [w for w, c in Counter(itos).items() if c > 1][:5]
            raise ValueError(f"Vocab: duplicate tokens {dup}")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], max_size: int | None = None, min_count: int = 1) -> "Vocab":
        """Vocabulary of the given sentences: words seen at least `min_count` times, at most `max_size`
        of them (the most frequent; specials not counted)."""
        if max_size is not None and max_size < 0:
            raise ValueError(f"Vocab.build: max_size must be >= 0, got {max_size}")
        if min_count < 1:
            raise ValueError(f"Vocab.build: min_count must be >= 1, got {min_count}")
        counts = Counter(w for tokens in token_lists for w in tokens)
        for special in SPECIALS:
            counts.pop(special, None)  # a literal "<unk>" in the text is the unknown token, not a new word
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(w, UNK) for w in tokens]

    def decode(self, ids: Iterable[int], *, strip_specials: bool = True) -> str:
        """Words of `ids` joined by spaces; stops at `</s>` and drops `<pad>`/`<s>` unless told not to."""
        return " ".join(self.itos[i] for i in self._decoded_ids(ids, strip_specials))

    def _decoded_ids(self, ids: Iterable[int], strip_specials: bool):
        """The ids `decode` writes, each checked: up to `</s>` and without `<pad>`/`<s>` when stripping."""
        for i in ids:
            i = int(i)
            if strip_specials and i == EOS:
                return
            if strip_specials and i in (PAD, BOS):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"{type(self).__name__}.decode: id {i} is outside the vocabulary of "
                                 f"{len(self.itos)} tokens")
            yield i

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        if not isinstance(d, dict) or "itos" not in d:
            raise ValueError("Vocab.from_dict: expected a dict with an 'itos' list (as written by Vocab.to_dict)")
        if "tokenizer" in d and cls is Vocab:  # a subword vocabulary (fastvae.data.subword) carries its tokenizer
            from .subword import TokenizerVocab

            return TokenizerVocab.from_dict(d)
        return cls(d["itos"])

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"
