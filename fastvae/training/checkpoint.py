"""Checkpoints: atomic writes, full training state, and loading a model back for eval/generate.

A checkpoint is one `torch.save` dict:
  format_version, fastvae_version, kind ("vae"|"lm"), model_config (dict), vocab (Vocab.to_dict()),
  model (state_dict), corpus (how the training corpus was given),
  and, for resumable checkpoints (`last.pt`, `best.pt`): optimizers, trainer (phase, epoch, step,
  position in the epoch's batch order, plateau/decay state, best metric, policy state, running
  epoch sums), rng (torch CPU/CUDA, python, numpy, data-order and aggressive generators),
  train_config (the full options).
Writes go to a temporary file in the same folder, are flushed and fsync'ed, then renamed over
the target (and the folder fsync'ed), so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

FORMAT_VERSION = 1


def atomic_torch_save(obj, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def capture_rng_state(**generators) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        state[name] = gen.get_state()
    return state


def restore_rng_state(state: dict, **generators) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state[name])


def read_checkpoint(path: str) -> dict:
    """Loads a checkpoint dict with clear errors for a missing, foreign or newer-format file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a corrupt/foreign file
        raise ValueError(f"cannot read checkpoint {path!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path!r} is not a fastvae checkpoint (no format_version/model entries)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {ckpt['format_version']}, newer than this "
                         f"fastvae understands ({FORMAT_VERSION}); upgrade fastvae")
    return ckpt


def load_model(path: str, device: str | torch.device = "cpu"):
    """(model in eval mode, vocab, checkpoint dict) from a checkpoint written by the trainer."""
    from ..data import Vocab
    from ..models import ModelConfig, build_model

    ckpt = read_checkpoint(path)
    config = ModelConfig(**ckpt["model_config"])
    vocab = Vocab.from_dict(ckpt["vocab"])
    model = build_model(ckpt["kind"], len(vocab), config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing/unexpected keys or shapes: the file was edited or is foreign
        raise ValueError(f"checkpoint {path!r}: its weights do not match its own model config "
                         f"({ckpt['model_config']}, vocabulary {len(vocab)}): "
                         f"{' '.join(str(exc).split())[:400]}") from exc
    model.to(device).eval()
    return model, vocab, ckpt
