"""A corpus folder in either layout turned into the train/valid/test.txt that `load_corpus` reads.

Layouts:
- plain: `train.txt`, `valid.txt`, `test.txt` (one sentence per line, optionally `label<TAB>text`);
- Yelp sentiment: `sentiment.{train,dev,test}.{0,1}`, the label being the file suffix. When the train and test
  files are missing (only `dev`, as in ../shared/data/yelp), all sentences are shuffled with the seed and split
  80/10/10 into train/valid/test.

`prepare_corpus` writes the labelled (or capped) splits into a folder of the caller's choosing, never beside the
data; a plain folder that needs no cap is used as it is.
"""
from __future__ import annotations

import os
import random

PLAIN_FILES = ("train.txt", "valid.txt", "test.txt")
YELP_SPLITS = ("train", "dev", "test")


def find_layout(directory: str) -> str:
    """'plain' (train/valid/test.txt) or 'yelp' (sentiment.<split>.<label>); clear error otherwise."""
    names = set(os.listdir(directory))
    if set(PLAIN_FILES) <= names:
        return "plain"
    if any(n.startswith("sentiment.") and n.rsplit(".", 1)[-1].isdigit() for n in names):
        return "yelp"
    missing = sorted(set(PLAIN_FILES) - names)
    raise ValueError(f"{directory}: neither train.txt/valid.txt/test.txt (missing {', '.join(missing)}) nor Yelp "
                     f"sentiment.<train|dev|test>.<label> files")


def _read_lines(path: str) -> list[str]:
    """The file's non-blank lines, stripped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def read_yelp(directory: str) -> dict[str, list[tuple[int, str]]]:
    """{split: [(label, sentence)]} from sentiment.<split>.<label> files (label = the file suffix)."""
    found: dict = {}
    for name in sorted(os.listdir(directory)):
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "sentiment" or not parts[2].isdigit():
            continue
        if parts[1] not in YELP_SPLITS:
            raise ValueError(f"{os.path.join(directory, name)}: unknown split {parts[1]!r} (expected "
                             f"{', '.join(YELP_SPLITS)})")
        found.setdefault(parts[1], []).extend((int(parts[2]), s) for s in _read_lines(os.path.join(directory, name)))
    if not found:
        raise ValueError(f"{directory}: no sentiment.<split>.<label> files")
    return found


def split_sentences(rows: list, seed: int, max_train: int | None = None, max_eval: int | None = None, *,
                    splits: dict | None = None) -> dict[str, list]:
    """train/valid/test lists: `splits` given (a dict with train/valid/test) are shuffled with `seed` and capped;
    otherwise `rows` are shuffled with `seed` and split 80/10/10, then capped."""
    rng = random.Random(seed)
    if splits is None:
        rows = list(rows)
        rng.shuffle(rows)
        n = len(rows)
        if n < 3:
            raise ValueError(f"too few sentences to split into train/valid/test: {n}")
        n_eval = max(1, n // 10)
        splits = {"test": rows[:n_eval], "valid": rows[n_eval:2 * n_eval], "train": rows[2 * n_eval:]}
    else:
        splits = {k: list(v) for k, v in splits.items()}
        for v in splits.values():
            rng.shuffle(v)
    caps = {"train": max_train, "valid": max_eval, "test": max_eval}
    return {k: (splits[k][:caps[k]] if caps[k] else splits[k]) for k in ("train", "valid", "test")}


def _write_splits(folder: str, splits: dict[str, list[str]]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, lines in splits.items():
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for line in lines)


def prepare_corpus(directory: str, out_dir: str, seed: int, max_train: int | None = None,
                   max_eval: int | None = None) -> tuple[str, dict]:
    """(the folder of train/valid/test.txt to load, a description of what was read).

    A Yelp folder is written to `out_dir` as `label<TAB>text` lines; a plain one is copied there only when
    `max_train` / `max_eval` cap it (a random sample, with `seed`), and used where it is otherwise."""
    source = os.path.abspath(directory)
    if find_layout(directory) == "yelp":
        found = read_yelp(directory)
        if {"train", "test"} <= set(found):
            splits = split_sentences([], seed, max_train, max_eval,
                                     splits={"train": found["train"], "valid": found.get("dev", []),
                                             "test": found["test"]})
            how = "sentiment.train/dev/test"
        else:
            rows = [row for split in found.values() for row in split]
            splits = split_sentences(rows, seed, max_train, max_eval)
            how = f"sentiment.{'/'.join(sorted(found))} shuffled (seed {seed}) and split 80/10/10"
        _write_splits(out_dir, {name: [f"{label}\t{text}" for label, text in pairs] for name, pairs in splits.items()})
    else:
        splits = {name: _read_lines(os.path.join(directory, f"{name}.txt")) for name in ("train", "valid", "test")}
        if not (max_train or max_eval):
            return directory, {"source": source, "layout": "train/valid/test.txt",
                               "sentences": {k: len(v) for k, v in splits.items()}}
        splits = split_sentences([], seed, max_train, max_eval, splits=splits)
        how = f"train/valid/test.txt, capped at random (seed {seed})"
        _write_splits(out_dir, splits)
    return out_dir, {"source": source, "layout": how, "sentences": {k: len(v) for k, v in splits.items()}}
