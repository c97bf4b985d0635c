"""A subword vocabulary: fastvae's ids over a Hugging Face tokenizer's tokens (for fastvae.hf's models).

fastvae's data layer (batching, BLEU, generation text) works on a `Vocab`; `TokenizerVocab` is one whose words are
a tokenizer's tokens, so the same corpus files, batching and metrics serve transformer VAEs. Its ids are fastvae's
four specials (`<pad>`, `<s>`, `</s>`, `<unk>`, ids 0-3) followed by the tokenizer's tokens in the tokenizer's id
order (a token spelled like one of the specials is that special). `encode(words)` joins the words with spaces and
tokenizes the text (so `load_corpus(dir, vocab=TokenizerVocab(...))` reads the usual one-sentence-per-line files);
`decode(ids)` turns the tokens back into text with the tokenizer's own decoder (byte-level BPE's `Ġ`, WordPiece's
`##`). The tokenizer travels inside `to_dict()` as its `tokenizer.json` text, so a checkpoint rebuilds the vocabulary
without the original files. Needs the `tokenizers` library (`pip install fastvae[hf]`) and a fast tokenizer.
"""
from __future__ import annotations

from typing import Iterable

from .vocab import SPECIALS, UNK, Vocab


def backend_tokenizer(tokenizer):
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (or the object itself when it is one)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("subword vocabularies need the tokenizers library: pip install 'fastvae[hf]'") from None
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise ValueError(f"a fast tokenizer (tokenizers.Tokenizer or a transformers tokenizer with is_fast=True) is "
                     f"needed, got {type(tokenizer).__name__}; load it with AutoTokenizer.from_pretrained(..., "
                     f"use_fast=True)")


class TokenizerVocab(Vocab):
    """fastvae's vocabulary over a tokenizer's tokens (module docstring)."""

    def __init__(self, tokenizer):
        backend = backend_tokenizer(tokenizer)
        size = backend.get_vocab_size(with_added_tokens=True)
        tokens = [backend.id_to_token(i) for i in range(size)]
        self.tokenizer = backend
        self.tokenizer_json = backend.to_str()  # once: to_dict is compared on every resume
        # the tokenizer's id of each fastvae id (specials: the tokenizer's token of that spelling, else -1)
        self.tokenizer_ids = [backend.token_to_id(s) if backend.token_to_id(s) is not None else -1 for s in SPECIALS]
        itos = list(SPECIALS)
        for i, token in enumerate(tokens):
            if token is not None and token not in SPECIALS:
                itos.append(token)
                self.tokenizer_ids.append(i)
        super().__init__(itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """ids of the words' text: the words joined by spaces, then tokenized (no special tokens added)."""
        text = tokens if isinstance(tokens, str) else " ".join(tokens)
        return [self.stoi.get(t, UNK) for t in self.tokenizer.encode(text, add_special_tokens=False).tokens]

    def decode(self, ids: Iterable[int], *, strip_specials: bool = True) -> str:
        """Text of `ids` through the tokenizer's decoder; stops at `</s>` and drops `<pad>`/`<s>` unless told not
        to (then the specials are written as `<s>` etc., as Vocab.decode does)."""
        pieces: list = []
        tokens: list = []
        for i in self._decoded_ids(ids, strip_specials):
            if i < len(SPECIALS) and i != UNK:
                pieces += [self._join(tokens), self.itos[i]]
                tokens = []
            else:
                tokens.append(self.itos[i])
        pieces.append(self._join(tokens))
        return " ".join(p for p in (p.strip() for p in pieces) if p)

    def _join(self, tokens: list) -> str:
        if not tokens:
            return ""
        decoder = self.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "tokenizer": self.tokenizer_json}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerVocab":
        if not isinstance(d, dict) or not isinstance(d.get("tokenizer"), str) or "itos" not in d:
            raise ValueError("TokenizerVocab.from_dict: expected a dict with 'itos' and 'tokenizer' (the tokenizer's "
                             "JSON), as written by TokenizerVocab.to_dict")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("this vocabulary is a subword tokenizer's (a transformer VAE's checkpoint): it needs the "
                              "tokenizers library: pip install 'fastvae[hf]'") from None
        vocab = cls(Tokenizer.from_str(d["tokenizer"]))
        vocab.tokenizer_json = d["tokenizer"]  # written back exactly as stored
        if vocab.itos != list(d["itos"]):
            raise ValueError("TokenizerVocab.from_dict: the stored token list differs from its tokenizer's: the entry "
                             "was edited or written by another version")
        return vocab

    def __repr__(self) -> str:
        return f"TokenizerVocab({len(self)} tokens)"


def retokenize_corpus(corpus, vocab: Vocab):
    """`corpus` (a fastvae Corpus, e.g. a built-in one) with every split's sentences re-encoded by `vocab`: each
    sentence's text (its own vocabulary's decode) goes through `vocab.encode`. Labels and factors are kept."""
    import torch

    from .corpus import Corpus, TextDataset

    splits = {}
    for name in ("train", "valid", "test"):
        old = corpus.split(name)
        sentences = [torch.tensor(vocab.encode(corpus.vocab.decode(s.tolist()).split()), dtype=torch.long)
                     for s in old.sentences]
        new = TextDataset(sentences, old.labels, old.name, old.label_names)
        if hasattr(old, "factors"):  # the synthetic corpus's generating factors travel with its sentences
            setattr(new, "factors", getattr(old, "factors"))
        splits[name] = new
    return Corpus(vocab, splits["train"], splits["valid"], splits["test"], dict(corpus.stats), corpus.label_names)
