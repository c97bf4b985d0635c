"""Bad input and misuse: every case is a clear error that says what was wrong and what is expected.

Checkpoints from a newer format, foreign or truncated files, a state dict that does not fit its
config, a vocabulary mismatch between a checkpoint and a corpus, resuming with changed options or
data, a model-only checkpoint, conflicting CLI options, a distributed launch on a device that is
not there. (Unknown recipe/config/option values of the Trainer: tests/test_trainer.py; of the
functional API, incl. tensors on mixed devices: tests/test_properties.py.)
"""
import os
import shutil

import pytest
import torch

from fastvae.cli import main
from fastvae.training import Trainer
from fastvae.training.checkpoint import load_model, read_checkpoint, seal

FAST = dict(config="tiny", progress=False, verbose=False, iw_samples=2, eval_batch_size=64, batch_size=16)


@pytest.fixture(scope="module")
def corpus():
    from fastvae.data.builtin import grammar_corpus

    return grammar_corpus(seed=1, n_train=80, n_valid=20, n_test=12)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A data directory and a finished 1-epoch run trained on it through the CLI."""
    from fastvae.data.builtin import write_corpus

    root = tmp_path_factory.mktemp("misuse")
    data = root / "data"
    write_corpus(corpus, str(data))
    out = root / "run"
    assert main(["train", "--data", str(data), "--config", "tiny", "--epochs", "1", "--batch-size", "16",
                 "--iw-samples", "2", "--out", str(out), "--no-progress", "--json", "--examples", "0"]) == 0
    return {"data": str(data), "out": str(out)}


def _error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae ") and "error" in err
    return err


def _edited_checkpoint(src, dst, edit):
    """A checkpoint edited on purpose, then re-sealed (its tensor digest matches), for the checks after it."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(seal(ckpt), dst)
    return str(dst)


def test_newer_format_version_is_refused(run, tmp_path, capsys):
    path = _edited_checkpoint(os.path.join(run["out"], "best.pt"), tmp_path / "future.pt",
                              lambda c: c.update(format_version=c["format_version"] + 1))
    with pytest.raises(ValueError, match="newer than this fastvae"):
        read_checkpoint(path)
    assert "upgrade fastvae" in _error(capsys, ["eval", "--checkpoint", path, "--data", run["data"]])


def test_foreign_and_truncated_files_are_refused(run, tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a fastvae checkpoint"):
        read_checkpoint(str(foreign))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_checkpoint(str(text))
    whole = open(os.path.join(run["out"], "best.pt"), "rb").read()
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole[: len(whole) // 2])
    assert "cannot read checkpoint" in _error(capsys, ["eval", "--checkpoint", str(torn), "--data", run["data"]])


def test_state_that_does_not_fit_its_config_is_a_clear_error(run, tmp_path):
    def shrink(ckpt):
        ckpt["model_config"]["latent_dim"] = ckpt["model_config"]["latent_dim"] + 3

    path = _edited_checkpoint(os.path.join(run["out"], "best.pt"), tmp_path / "mismatch.pt", shrink)
    with pytest.raises(ValueError, match="do not match its own model config") as info:
        load_model(path)
    assert "mismatch.pt" in str(info.value)


def test_vocabulary_mismatch_between_checkpoint_and_corpus(run, tmp_path, capsys):
    # the run's corpus changed on disk: resuming would silently remap every word id
    data = tmp_path / "changed"
    shutil.copytree(run["data"], data)
    with open(data / "train.txt", "a") as handle:
        handle.write("zyxwv qwerty uiop\n")
    resume_dir = tmp_path / "resume"
    shutil.copytree(run["out"], resume_dir)
    _edited_checkpoint(resume_dir / "last.pt", resume_dir / "last.pt",
                       lambda c: c["corpus"].update(data=str(data)))
    assert "vocabulary" in _error(capsys, ["train", "--resume", str(resume_dir), "--no-progress"])
    # a model whose vocabulary size is not the corpus's
    from fastvae.data.builtin import grammar_corpus
    from fastvae.models import build_model, get_config

    other = grammar_corpus(seed=1, n_train=80, n_valid=20, n_test=12)
    model = build_model("vae", len(other.vocab) + 5, get_config("tiny"))
    with pytest.raises(ValueError, match="vocabulary size"):
        Trainer(model, other, recipe="vae", **FAST)


def test_resume_misuse(run, tmp_path, capsys):
    assert "give no other training options" in _error(
        capsys, ["train", "--resume", run["out"], "--epochs", "5", "--no-progress"])
    # a model-only checkpoint has no training state to continue
    model_only = _edited_checkpoint(os.path.join(run["out"], "last.pt"), tmp_path / "model.pt",
                                    lambda c: c.pop("trainer"))
    assert "training state" in _error(capsys, ["train", "--resume", model_only, "--no-progress"])
    assert "does not exist" in _error(capsys, ["train", "--resume", str(tmp_path / "nothing"), "--no-progress"])


@pytest.mark.parametrize("args,match", [
    (["train", "--recipe", "cyclical", "--cycles", "2", "--cycle-epochs", "3"], "conflicting"),
    (["train", "--recipe", "vae", "--max-inner-steps", "3"], "aggressive"),
    (["train", "--recipe", "vae", "--fb-mode", "dim"], "target_kl"),
    (["train", "--optimizer", "adam", "--momentum", "0.9"], "conflicting"),
    (["train", "--corpus", "grammar", "--max-vocab", "10"], "built-in"),
    (["train", "--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "cuda"),
    (["train", "--lr", "nan"], "lr"),
    (["train", "--clip", "-1"], "clip"),
])
def test_conflicting_and_unknown_cli_values(args, match, capsys):
    assert match in _error(capsys, args + ["--epochs", "1", "--no-progress"])


def test_distributed_launch_on_missing_device(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert "CUDA" in _error(capsys, ["train", "--device", "cuda", "--epochs", "1", "--no-progress"])


def test_resume_with_another_model_config_is_refused(run, corpus, tmp_path):
    resume_dir = tmp_path / "resume"
    shutil.copytree(run["out"], resume_dir)

    def widen(ckpt):
        ckpt["model_config"]["latent_dim"] += 3

    _edited_checkpoint(resume_dir / "last.pt", resume_dir / "last.pt", widen)
    from fastvae.data import load_corpus

    trainer = Trainer(None, load_corpus(run["data"]), recipe="vae", out_dir=str(resume_dir), epochs=1, **FAST)
    with pytest.raises(ValueError, match="holds a model with config"):
        trainer.fit(resume=str(resume_dir))


def test_resume_of_a_run_saved_before_plateau_decay_existed(run, tmp_path, monkeypatch):
    # such a run decayed on plateau: it resumes with the option on, whatever its recipe's default now is
    import fastvae.training

    resume_dir = tmp_path / "old"
    shutil.copytree(run["out"], resume_dir)
    def as_format_2_without_the_option(c):  # what such a run wrote (format 2 or older; checkpoint.py migrates it)
        for key in ("plateau_decay", "mi_batch_size"):
            c["train_config"].pop(key)
        c["model_config"].pop("family")
        c["format_version"] = 2

    _edited_checkpoint(resume_dir / "last.pt", resume_dir / "last.pt", as_format_2_without_the_option)
    seen = []

    class Recording(Trainer):
        def __init__(self, *args, **options):
            seen.append(options)
            super().__init__(*args, **options)

    monkeypatch.setattr(fastvae.training, "Trainer", Recording)
    assert main(["train", "--resume", str(resume_dir), "--no-progress"]) == 0
    assert seen and seen[0]["plateau_decay"] is True
