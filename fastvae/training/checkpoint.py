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

Safe to load from anyone: `read_checkpoint` unpickles with `torch.load(weights_only=True)`, which
builds only tensors and plain Python values and refuses every other global, so a file cannot run
code. Format 2 and later hold nothing else (the numpy RNG state is stored as a tensor and plain values),
plus `tensor_sha256`, a digest of every tensor, checked on load. Format 3 adds `train_config["mi_batch_size"]`
and `model_config["family"]`. Older formats are migrated here, keyed on `format_version` (`_MIGRATIONS`), so
the rest of fastvae sees the current format only.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile

import numpy as np
import torch

FORMAT_VERSION = 3
DIGEST_KEY = "tensor_sha256"


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


def write_checkpoint(ckpt: dict, path: str) -> None:
    """Seals `ckpt` with the digest of its tensors and writes it atomically."""
    atomic_torch_save(seal(ckpt), path)


def seal(ckpt: dict) -> dict:
    """`ckpt` with `tensor_sha256` set to the digest of its tensors (in place; returned for chaining)."""
    ckpt.pop(DIGEST_KEY, None)
    ckpt[DIGEST_KEY] = tensor_digest(ckpt)
    return ckpt


def tensor_digest(obj) -> str:
    """SHA-256 over every tensor in a nest of dicts, lists and tuples: where it sits, dtype, shape, bytes."""
    digest = hashlib.sha256()

    def visit(node, where: str) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}|{flat.dtype}|{tuple(node.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(node, dict):
            for key in sorted(node, key=repr):
                if not (where == "" and key == DIGEST_KEY):
                    visit(node[key], f"{where}/{key!r}")
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                visit(item, f"{where}[{i}]")

    visit(obj, "")
    return digest.hexdigest()


def _numpy_rng_state() -> dict:
    """numpy's global RNG state as a tensor and plain values (no numpy objects: weights_only loads it)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["bit_generator"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def capture_rng_state(**generators) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        state[name] = gen.get_state()
    return state


def restore_rng_state(state: dict, **generators) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    _set_numpy_rng_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state[name])


def _legacy_numpy_globals() -> list:
    """What format 1 pickled for numpy's RNG state: array reconstruction only (builds arrays, runs nothing)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_load(path: str):
    """torch.load that can only build tensors and plain values (plus format 1's numpy RNG arrays)."""
    allowed = _legacy_numpy_globals()
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch 2.4: the allow-list is process-wide only
        torch.serialization.add_safe_globals(allowed)
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str) -> dict:
    """Loads a checkpoint dict, safely (no code in the file can run), migrated to the current format.

    Clear errors for a missing, foreign, unsafe, corrupted (digest mismatch) or newer-format file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = _safe_load(path)
    except pickle.UnpicklingError as exc:
        message = " ".join(str(exc).split())
        if "weights_only" in message or "global" in message.lower():
            raise ValueError(
                f"refusing to load {path!r}: it holds Python objects that a fastvae checkpoint never contains, and "
                f"unpickling them could run code (fastvae loads checkpoints with torch.load(weights_only=True)). "
                f"torch said: {message[:300]}") from exc
        raise ValueError(f"cannot read checkpoint {path!r}: {message[:300]}") from exc
    except Exception as exc:  # torch raises several types for a corrupt/foreign file
        raise ValueError(f"cannot read checkpoint {path!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path!r} is not a fastvae checkpoint (no format_version/model entries)")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path!r} has format version {version!r}: not a fastvae checkpoint")
    if version > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {version}, newer than this "
                         f"fastvae understands ({FORMAT_VERSION}); upgrade fastvae")
    if version >= 2:
        expected = ckpt.get(DIGEST_KEY)
        if expected is None:
            raise ValueError(f"checkpoint {path!r} (format {version}) has no {DIGEST_KEY}: it was not written "
                             f"by fastvae, or was edited")
        if tensor_digest(ckpt) != expected:
            raise ValueError(f"checkpoint {path!r} is corrupted: its tensors do not match the digest stored when "
                             f"it was written ({DIGEST_KEY}); the file was damaged or edited")
    while ckpt["format_version"] < FORMAT_VERSION:
        _MIGRATIONS[ckpt["format_version"]](ckpt)
    return ckpt


def _migrate_1_to_2(ckpt: dict) -> None:
    """Format 1: numpy's RNG state as numpy's own tuple; the aggressive policy's epoch-start counter on the
    trainer; no digest."""
    rng = ckpt.get("rng")
    if rng is not None and isinstance(rng.get("numpy"), tuple):
        name, keys, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {"bit_generator": name, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = ckpt.get("trainer")
    if state is not None and "inner_steps_at_epoch_start" in state:
        policy = dict(state.get("policy") or {})
        policy.setdefault("epoch_start_inner_steps", state.pop("inner_steps_at_epoch_start"))
        state["policy"] = policy
    ckpt["format_version"] = 2


def _migrate_2_to_3(ckpt: dict) -> None:
    """Format 2: no per-batch MI setting (mi_batch was formed over the evaluation batches; a resumed run uses the
    papers' 32 from then on), no model family (every model was He et al.'s), and, in the oldest, no stop reason
    in the training state."""
    config = ckpt.get("train_config")
    if config is not None:
        config.setdefault("mi_batch_size", 32)
        config.setdefault("plateau_decay", True)  # runs written before the option existed decayed on plateau
    model_config = ckpt.get("model_config")
    if isinstance(model_config, dict):
        model_config.setdefault("family", "he2019")
    state = ckpt.get("trainer")
    if state is not None:
        state.setdefault("stopped_reason", None)  # formats 1 and 2 before the per-phase stop reason
    ckpt["format_version"] = 3


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


def load_model(path: str, device: str | torch.device = "cpu", *, model=None, checkpoint: dict | None = None):
    """(model in eval mode, vocab, checkpoint dict) from a checkpoint written by the trainer. The model is rebuilt
    from the checkpoint's model config (fastvae's models) or model source (fastvae.hf); a user's own module is
    given as `model` and its weights are loaded into it. `checkpoint`: the file's contents when the caller has
    already read them (`read_checkpoint(path)`), so that it is not read again."""
    from ..data import Vocab
    from ..devices import resolve_device
    from ..models import ModelConfig, build_model
    from ..models.protocol import rebuild_from_source

    device = resolve_device(device)  # before reading: a device that is not there is the first thing to say
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path)
    vocab = Vocab.from_dict(ckpt["vocab"])
    if model is not None:
        described = f"the given {type(model).__name__}"
    elif ckpt.get("model_config") is not None:
        model = build_model(ckpt["kind"], len(vocab), ModelConfig(**ckpt["model_config"]))
        described = f"its own model config ({ckpt['model_config']}, vocabulary {len(vocab)})"
    elif ckpt.get("model_source") is not None:
        model = rebuild_from_source(ckpt["model_source"], where=repr(path))
        described = f"the model its source describes ({ckpt['model_source']['builder']})"
    else:
        raise ValueError(f"checkpoint {path!r} holds a {ckpt.get('model_class', 'user model')}, which it cannot "
                         f"rebuild: build the model and pass it (load_model(path, model=...))")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing/unexpected keys or shapes: the file was edited or is foreign
        raise ValueError(f"checkpoint {path!r}: its weights do not match {described}: "
                         f"{' '.join(str(exc).split())[:400]}") from exc
    model.to(device).eval()
    return model, vocab, ckpt
