"""Reading corpora: one whitespace-tokenised sentence per line, optionally `label<TAB>text`.

Rules (recipes.md): the vocabulary comes from the training split; out-of-vocabulary words of any
split map to `<unk>`; empty lines are dropped and counted. Lines longer than `max_len` words are
truncated to `max_len` and counted (documented truncation), so long lines never cost memory
silently. A line of more than `max_line_bytes` bytes (default 1 MiB: no sentence is that long, a
binary file or one without newlines is) raises `CorpusError` before it is read whole. Bytes that are
not UTF-8, a missing file, or a split with no sentences raise `CorpusError` naming the file (and
the line).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch

from .vocab import Vocab

SPLITS = ("train", "valid", "test")
MAX_LINE_BYTES = 1 << 20


class CorpusError(ValueError):
    """A corpus file is missing, unreadable, or has no usable sentences."""


class CorpusWarning(UserWarning):
    """A corpus file that reads, but is probably not what was meant (the message says what was seen)."""


# an evaluation split with more <unk> than this, for the training vocabulary, is probably other text
UNK_WARNING_RATE = 0.5


@dataclass
class RawSplit:
    path: str
    token_lists: list
    raw_labels: list | None
    stats: dict


class TextDataset:
    """Sentences as 1-D LongTensors of word ids (without `<s>`/`</s>`), and optional labels."""

    def __init__(self, sentences: list, labels: torch.Tensor | None = None, name: str = "data",
                 label_names: list | None = None):
        if labels is not None and len(labels) != len(sentences):
            raise ValueError(f"TextDataset {name}: {len(labels)} labels for {len(sentences)} sentences")
        self.sentences = sentences
        self.labels = labels
        self.name = name
        self.label_names = label_names

    def __len__(self) -> int:
        return len(self.sentences)

    def num_tokens(self) -> int:
        """Words plus one `</s>` per sentence: the perplexity denominator (`<s>` is not predicted)."""
        return sum(len(s) + 1 for s in self.sentences)

    def subset(self, indices) -> "TextDataset":
        indices = list(indices)
        labels = self.labels[indices] if self.labels is not None else None
        return TextDataset([self.sentences[i] for i in indices], labels, self.name, self.label_names)

    def __repr__(self) -> str:
        return f"TextDataset({self.name!r}, {len(self)} sentences, labels={self.labels is not None})"


@dataclass
class Corpus:
    vocab: Vocab
    train: TextDataset
    valid: TextDataset
    test: TextDataset
    stats: dict = field(default_factory=dict)
    label_names: list | None = None

    def split(self, name: str) -> TextDataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def read_split(path: str, *, max_len: int | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> RawSplit:
    """Tokenise one file. Labels are kept as strings here; the corpus maps them to ids."""
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len must be an int >= 1 (words per sentence), got {max_len!r}")
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be an int >= 1, got {max_line_bytes!r}")
    if not os.path.exists(path):
        raise CorpusError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CorpusError(f"{path}: is a directory, expected a text file with one sentence per line")
    token_lists, labels = [], []
    stats = {"lines": 0, "empty_lines": 0, "truncated_lines": 0, "labelled_lines": 0, "multi_tab_lines": 0}
    with open(path, "rb") as f:
        # readline with a limit: a huge line (or a file without newlines) is refused before it is read whole
        for lineno, raw in enumerate(iter(lambda: f.readline(max_line_bytes + 1), b""), start=1):
            if len(raw) > max_line_bytes:
                raise CorpusError(f"{path}:{lineno}: line longer than {max_line_bytes} bytes; a corpus has one "
                                  "sentence per line (pass a larger max_line_bytes if this line is meant)")
            stats["lines"] += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start:exc.start + 1]
                raise CorpusError(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start}: {bad!r});"
                                  " convert the file to UTF-8") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not part of the first word
            label = None
            if "\t" in line:
                if line.count("\t") > 1:
                    stats["multi_tab_lines"] += 1
                label, line = line.split("\t", 1)
                label = label.strip()
                if not label:
                    raise CorpusError(f"{path}:{lineno}: empty label before the tab")
            tokens = line.split()
            if not tokens:
                stats["empty_lines"] += 1
                continue
            if max_len is not None and len(tokens) > max_len:
                tokens = tokens[:max_len]
                stats["truncated_lines"] += 1
            token_lists.append(tokens)
            labels.append(label)
    if not token_lists:
        raise CorpusError(f"{path}: no sentences (the file is empty or has only blank lines)")
    labelled = sum(lbl is not None for lbl in labels)
    stats["labelled_lines"] = labelled
    if 0 < labelled < len(labels):
        first = next(i for i, lbl in enumerate(labels) if lbl is None)
        raise CorpusError(f"{path}: {labelled} of {len(labels)} sentences have a `label<TAB>` prefix; either all or"
                          f" none must (sentence {first + 1} has none)")
    raw = RawSplit(path, token_lists, labels if labelled else None, stats)
    _check_shape(raw, max_len)
    return raw


def _check_shape(raw: RawSplit, max_len: int | None) -> None:
    """Files that read but were probably meant otherwise: refuse the unmistakable, warn on the likely."""
    n, stats = len(raw.token_lists), raw.stats
    if raw.raw_labels is not None:
        label_words = sum(len(lbl.split()) for lbl in raw.raw_labels) / n
        one_word = sum(len(tokens) == 1 for tokens in raw.token_lists) / n
        distinct_after = len({tokens[0] for tokens in raw.token_lists if len(tokens) == 1})
        if label_words >= 3 and one_word >= 0.95 and distinct_after <= max(20, n // 100):
            raise CorpusError(
                f"{raw.path}: this looks like text<TAB>label with the columns swapped: the part before the tab "
                f"(read as the label) has {label_words:.1f} words on average, the part after it (read as the "
                f"sentence) is one word in {one_word:.0%} of lines, {distinct_after} distinct. fastvae reads "
                f"label<TAB>text; swap the columns, e.g. awk -F'\\t' -v OFS='\\t' '{{print $2, $1}}'")
        if len(set(raw.raw_labels)) > max(50, n // 2):
            warnings.warn(f"{raw.path}: {len(set(raw.raw_labels)):,} distinct labels in {n:,} lines: the part "
                          f"before each tab is read as a class label; if it is text, remove the tabs",
                          CorpusWarning, stacklevel=3)
    if stats["multi_tab_lines"] > 0.1 * n:
        warnings.warn(f"{raw.path}: {stats['multi_tab_lines']:,} of {n:,} lines have more than one tab: fastvae "
                      f"reads label<TAB>text, so every later column is read as words of the sentence",
                      CorpusWarning, stacklevel=3)
    if max_len is not None and stats["truncated_lines"] > 0.5 * n:
        warnings.warn(f"{raw.path}: {stats['truncated_lines']:,} of {n:,} lines are longer than max_len={max_len} "
                      f"words and were cut: is this one document per line rather than one sentence?",
                      CorpusWarning, stacklevel=3)


def unk_rate(dataset: "TextDataset") -> float:
    """The fraction of a split's words that are `<unk>` (id 3) for the vocabulary it was encoded with."""
    words = sum(len(s) for s in dataset.sentences)
    return sum(int((s == 3).sum()) for s in dataset.sentences) / words if words else 0.0


def warn_if_mostly_unknown(dataset: "TextDataset", path: str, what: str) -> None:
    rate = unk_rate(dataset)
    if rate > UNK_WARNING_RATE:
        warnings.warn(f"{path}: {rate:.1%} of its words are <unk> for {what}: is it the same kind of text "
                      f"(language, tokenisation, lower-casing)?", CorpusWarning, stacklevel=3)


def _encode(raw: RawSplit, vocab: Vocab, name: str, label_names: list | None) -> TextDataset:
    sentences = [torch.tensor(vocab.encode(tokens), dtype=torch.long) for tokens in raw.token_lists]
    labels = None
    if raw.raw_labels is not None:
        if label_names is None:
            raise CorpusError(f"{raw.path}: labelled sentences, but the training split has no labels")
        index = {lbl: i for i, lbl in enumerate(label_names)}
        unknown = sorted({lbl for lbl in raw.raw_labels if lbl not in index})
        if unknown:
            raise CorpusError(f"{raw.path}: labels {unknown[:5]} do not occur in the training split {label_names}")
        labels = torch.tensor([index[lbl] for lbl in raw.raw_labels], dtype=torch.long)
    raw.stats["unk_tokens"] = sum(int((s == 3).sum()) for s in sentences)
    raw.stats["words"] = sum(len(s) for s in sentences)
    raw.stats["unk_rate"] = raw.stats["unk_tokens"] / raw.stats["words"] if raw.stats["words"] else 0.0
    return TextDataset(sentences, labels, name, label_names)


def _label_names(raw_labels: list) -> list:
    names = sorted(set(raw_labels))
    try:  # numeric labels sort numerically ("2" before "10")
        names = sorted(names, key=float)
    except ValueError:
        pass
    return names


def read_dataset(path: str, vocab: Vocab, *, name: str | None = None, max_len: int | None = None,
                 label_names: list | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> TextDataset:
    """One file encoded with an existing vocabulary (for evaluating a checkpoint on new text)."""
    raw = read_split(path, max_len=max_len, max_line_bytes=max_line_bytes)
    if raw.raw_labels is not None and label_names is None:
        label_names = _label_names(raw.raw_labels)
    dataset = _encode(raw, vocab, name or os.path.basename(path), label_names)
    warn_if_mostly_unknown(dataset, path, f"the given vocabulary ({len(vocab):,} words)")
    return dataset


def load_corpus(data_dir: str | None = None, *, train: str | None = None, valid: str | None = None,
                test: str | None = None, max_vocab: int | None = None, min_count: int = 1,
                max_len: int | None = None, vocab: Vocab | None = None, max_line_bytes: int = MAX_LINE_BYTES,
                tokenizer=None) -> Corpus:
    """A corpus from a directory holding train.txt, valid.txt and test.txt, or from three explicit files.

    `vocab` given (for example from a checkpoint): encode with it instead of building one. `tokenizer` (a fast
    Hugging Face tokenizer, e.g. a transformer VAE's decoder's): its subword vocabulary encodes the text
    (fastvae.data.subword.TokenizerVocab); by default the vocabulary is the training split's words."""
    if tokenizer is not None:
        if vocab is not None:
            raise ValueError("load_corpus: give vocab or tokenizer, not both")
        from .subword import TokenizerVocab

        vocab = TokenizerVocab(tokenizer)
    if data_dir is not None:
        if any(p is not None for p in (train, valid, test)):
            raise ValueError("load_corpus: give either data_dir or train/valid/test files, not both")
        if not os.path.isdir(data_dir):
            raise CorpusError(f"{data_dir}: no such directory")
        paths = {s: os.path.join(data_dir, f"{s}.txt") for s in SPLITS}
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise CorpusError(f"{data_dir}: missing {', '.join(os.path.basename(p) for p in missing)} "
                              "(a corpus directory holds train.txt, valid.txt and test.txt)")
    else:
        paths = {"train": train, "valid": valid, "test": test}
        absent = [s for s, p in paths.items() if p is None]
        if absent:
            raise ValueError(f"load_corpus: give data_dir, or all of train/valid/test (missing: {', '.join(absent)})")
    raws = {s: read_split(paths[s], max_len=max_len, max_line_bytes=max_line_bytes) for s in SPLITS}
    given_vocab = vocab is not None
    if vocab is None:
        vocab = Vocab.build(raws["train"].token_lists, max_size=max_vocab, min_count=min_count)
    label_names = _label_names(raws["train"].raw_labels) if raws["train"].raw_labels is not None else None
    datasets = {s: _encode(raws[s], vocab, s, label_names) for s in SPLITS}
    for split in ("valid", "test") if not given_vocab else SPLITS:
        warn_if_mostly_unknown(datasets[split], paths[split],
                               f"the vocabulary of {'the checkpoint' if given_vocab else 'the training split'} "
                               f"({len(vocab):,} words)")
    if not given_vocab and len(vocab) - 4 < 20 and len(raws["train"].token_lists) >= 100:
        warnings.warn(f"{paths['train']}: only {len(vocab) - 4} distinct words in "
                      f"{len(raws['train'].token_lists):,} training sentences: is this the text column?",
                      CorpusWarning, stacklevel=2)
    stats = {s: raws[s].stats for s in SPLITS}
    return Corpus(vocab, datasets["train"], datasets["valid"], datasets["test"], stats, label_names)
