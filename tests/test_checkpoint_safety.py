"""Checkpoints are safe to load from anyone and cannot be silently damaged.

- A file whose pickle would run code (a `__reduce__` calling os.system) is refused by
  `read_checkpoint` and by every command that loads one, and the code does not run; the same
  payload does run under an unsafe `torch.load`, so the test's payload is real.
- A bit flipped in a stored tensor, or a tensor edited without re-sealing, is reported as corrupted.
- A format-1 checkpoint (numpy RNG arrays, no digest) still loads, is migrated, and resumes exactly
  like its format-2 twin.
"""
import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from fastvae.cli import main
from fastvae.training.checkpoint import DIGEST_KEY, FORMAT_VERSION, read_checkpoint, seal, tensor_digest

TIMING_KEYS = {"seconds", "tokens_per_s"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch aggressive run (it has policy state, optimizers and every RNG stream)."""
    from fastvae.data.builtin import grammar_corpus, write_corpus

    root = tmp_path_factory.mktemp("ckpt-safety")
    data = root / "data"
    write_corpus(grammar_corpus(seed=3, n_train=64, n_valid=16, n_test=12), str(data))
    out = root / "run"
    assert main(["train", "--data", str(data), "--config", "tiny", "--recipe", "aggressive",
                 "--max-inner-steps", "2", "--epochs", "1", "--batch-size", "16", "--iw-samples", "2",
                 "--out", str(out), "--no-progress", "--json", "--examples", "0"]) == 0
    return {"data": str(data), "out": str(out)}


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_does_not_run(run, tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    hostile = {"format_version": FORMAT_VERSION, "model": {}, "payload": _RunsCode(str(marker))}
    path = tmp_path / "shared-with-you.pt"
    if container == "torch.save":
        torch.save(hostile, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(hostile, handle, protocol=2)
    with pytest.raises(ValueError, match="refusing to load") as info:
        read_checkpoint(str(path))
    assert "could run code" in str(info.value)
    for args in (["eval", "--checkpoint", str(path), "--data", run["data"]],
                 ["generate", "--checkpoint", str(path), "--n", "2"],
                 ["train", "--resume", str(path), "--no-progress"]):
        assert "refusing to load" in _one_line_error(capsys, args)
    assert not marker.exists(), "the checkpoint's code ran"
    # the payload is real: an unsafe load runs it
    if container == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as handle:
            pickle.load(handle)
    assert marker.exists()


def _largest_tensor_record(path):
    """(offset in the file, size) of the largest tensor storage in a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_a_flipped_bit_in_a_tensor_is_reported(run, tmp_path, capsys):
    path = tmp_path / "best.pt"
    shutil.copy(os.path.join(run["out"], "best.pt"), path)
    read_checkpoint(str(path))  # intact: loads
    offset, size = _largest_tensor_record(path)
    with open(path, "r+b") as handle:
        handle.seek(offset + size // 2)
        byte = handle.read(1)
        handle.seek(offset + size // 2)
        handle.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ValueError, match="corrupted"):
        read_checkpoint(str(path))
    assert "corrupted" in _one_line_error(capsys, ["eval", "--checkpoint", str(path), "--data", run["data"]])


def test_the_digest_covers_every_tensor_and_only_sealing_accepts_an_edit(run, tmp_path):
    ckpt = torch.load(os.path.join(run["out"], "last.pt"), weights_only=True)
    assert ckpt[DIGEST_KEY] == tensor_digest(ckpt)
    edits = {
        "model weight": lambda c: c["model"][next(iter(c["model"]))].view(-1)[0].add_(1e-3),
        "a tensor removed": lambda c: c["model"].pop(next(iter(c["model"]))),
        "rng stream": lambda c: c["rng"]["torch"].view(-1)[5].add_(1),
        "a tensor's dtype": lambda c: c["model"].update(
            {k: v.double() for k, v in list(c["model"].items())[:1]}),
    }
    for what, edit in edits.items():
        copy = torch.load(os.path.join(run["out"], "last.pt"), weights_only=True)
        edit(copy)
        torch.save(copy, tmp_path / "edited.pt")
        with pytest.raises(ValueError, match="corrupted"):
            read_checkpoint(str(tmp_path / "edited.pt"))
        if what == "model weight":  # an edit on purpose, re-sealed, loads
            torch.save(seal(copy), tmp_path / "sealed.pt")
            read_checkpoint(str(tmp_path / "sealed.pt"))
    missing = torch.load(os.path.join(run["out"], "last.pt"), weights_only=True)
    missing.pop(DIGEST_KEY)
    torch.save(missing, tmp_path / "unsealed.pt")
    with pytest.raises(ValueError, match=DIGEST_KEY):
        read_checkpoint(str(tmp_path / "unsealed.pt"))


def _as_format_2(ckpt: dict) -> dict:
    """What fastvae wrote before format 3: no mi_batch_size option, no model family; sealed."""
    old = dict(ckpt)
    old["train_config"] = {k: v for k, v in old["train_config"].items() if k != "mi_batch_size"}
    old["model_config"] = {k: v for k, v in old["model_config"].items() if k != "family"}
    old["format_version"] = 2
    return seal(old)


def _as_format_1(ckpt: dict) -> dict:
    """What fastvae wrote before format 2: numpy's RNG tuple, the policy's epoch start on the trainer."""
    old = _as_format_2(ckpt)
    old.pop(DIGEST_KEY)
    old["format_version"] = 1
    rng = dict(old["rng"])
    state = rng["numpy"]
    rng["numpy"] = (state["bit_generator"], state["keys"].numpy().astype(np.uint32), state["pos"],
                    state["has_gauss"], state["cached_gaussian"])
    old["rng"] = rng
    trainer = dict(old["trainer"])
    policy = dict(trainer["policy"])
    trainer["inner_steps_at_epoch_start"] = policy.pop("epoch_start_inner_steps")
    trainer["policy"] = policy
    old["trainer"] = trainer
    return old


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in handle]


def test_a_format_1_checkpoint_is_migrated_and_resumes_like_its_twin(run, tmp_path):
    new = read_checkpoint(os.path.join(run["out"], "last.pt"))
    assert "epoch_start_inner_steps" in new["trainer"]["policy"]
    twins = {}
    for version in (1, 2, 3):
        copy = tmp_path / f"format{version}"
        shutil.copytree(run["out"], copy)
        if version == 2:
            for name in ("last.pt", "best.pt"):
                torch.save(_as_format_2(torch.load(copy / name, weights_only=True)), copy / name)
            migrated = read_checkpoint(str(copy / "last.pt"))
            assert migrated["format_version"] == FORMAT_VERSION == 3
            assert migrated["train_config"]["mi_batch_size"] == 32 and migrated["model_config"]["family"] == "he2019"
        if version == 1:
            for name in ("last.pt", "best.pt"):
                ckpt = torch.load(copy / name, weights_only=True)
                torch.save(_as_format_1(ckpt), copy / name)
            with pytest.raises(pickle.UnpicklingError):  # a format-1 file holds numpy arrays: not plain values
                torch.load(copy / "last.pt", weights_only=True)
            migrated = read_checkpoint(str(copy / "last.pt"))
            assert migrated["format_version"] == FORMAT_VERSION
            assert migrated["trainer"]["policy"] == new["trainer"]["policy"]
            assert "inner_steps_at_epoch_start" not in migrated["trainer"]
            assert torch.equal(migrated["rng"]["numpy"]["keys"], new["rng"]["numpy"]["keys"])
        assert main(["train", "--resume", str(copy), "--no-progress", "--json", "--examples", "0"]) == 0
        twins[version] = copy
    assert _records(twins[1]) == _records(twins[2]) == _records(twins[3])
    a, b, c = (read_checkpoint(str(twins[v] / "last.pt")) for v in (1, 2, 3))
    assert all(torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["model"][k], c["model"][k])
               for k in a["model"])
