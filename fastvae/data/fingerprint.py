"""Fingerprints (size and SHA-256) of the files a run trains on, so a resume can tell that they changed."""
from __future__ import annotations

import hashlib
import os

from .corpus import SPLITS


def file_fingerprint(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def corpus_fingerprints(corpus_info: dict) -> dict:
    """{split: fingerprint} of the files named by a run's corpus record ({} for a built-in corpus)."""
    if corpus_info.get("data"):
        paths = {split: os.path.join(corpus_info["data"], f"{split}.txt") for split in SPLITS}
    elif all(corpus_info.get(split) for split in SPLITS):
        paths = {split: corpus_info[split] for split in SPLITS}
    else:
        return {}
    return {split: file_fingerprint(path) for split, path in paths.items()}


def describe_changes(saved: dict, current: dict) -> list[str]:
    """One phrase per split whose file differs between two fingerprint records."""
    changes = []
    for split in sorted(set(saved) | set(current)):
        before, now = saved.get(split), current.get(split)
        if before is None or now is None:
            changes.append(f"{split}: {'added' if before is None else 'no longer given'}")
        elif before["sha256"] != now["sha256"]:
            size = f"{before['size']:,} -> {now['size']:,} bytes" if before["size"] != now["size"] else \
                f"same size ({now['size']:,} bytes), other content"
            changes.append(f"{now['path']} ({size})")
    return changes
