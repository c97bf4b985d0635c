"""Exact resume and the NaN guard.

- A real `python -m fastvae train` subprocess, killed with SIGKILL in the middle of an epoch and
  continued with `--resume RUN_DIR`, ends with the same parameters as an uninterrupted run:
  bitwise (torch.equal) on this CPU, same thread count, fixed seed. Also the same metrics.jsonl
  (timings aside) and the same test metrics.
- A NaN loss stops the run with a message naming the step; last.pt/best.pt stay the last good
  (finite) checkpoints and a resume from them runs.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastvae.training import Trainer, TrainingDiverged
from fastvae.training.checkpoint import read_checkpoint

TIMING_KEYS = {"seconds", "tokens_per_s"}


@pytest.fixture(scope="module")
def corpus():
    from fastvae.data.builtin import grammar_corpus

    return grammar_corpus(seed=0, n_train=240, n_valid=40, n_test=24)


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    from fastvae.data.builtin import write_corpus

    path = tmp_path_factory.mktemp("resume-data")
    write_corpus(corpus, str(path))
    return str(path)


def _env():
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train_cmd(data_dir, out):
    return [sys.executable, "-m", "fastvae", "train", "--data", data_dir, "--config", "tiny",
            "--recipe", "aggressive", "--max-inner-steps", "4", "--inner-window", "2",
            "--epochs", "3", "--batch-size", "8", "--seed", "11", "--iw-samples", "2",
            "--checkpoint-every", "1", "--no-progress", "--json", "--examples", "0", "--out", out]


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in handle]


def _assert_same_models(a_path, b_path):
    a, b = read_checkpoint(a_path)["model"], read_checkpoint(b_path)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ after resume: {different}"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(data_dir, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    reference = subprocess.run(_train_cmd(data_dir, full), env=_env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    proc = subprocess.Popen(_train_cmd(data_dir, killed), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = os.path.join(killed, "last.pt")
    state = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(last):
                # reading while the trainer rewrites it every step: atomic renames never show a torn file
                state = read_checkpoint(last)["trainer"]
                if state["epoch"] == 1 and state["position"] >= 3:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed mid-epoch"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    state = read_checkpoint(last)["trainer"]
    assert state["epoch"] == 1 and state["position"] > 0, state  # killed in the middle of epoch 2

    resumed = subprocess.run([sys.executable, "-m", "fastvae", "train", "--resume", killed, "--no-progress",
                              "--json", "--examples", "0"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_models(os.path.join(full, "last.pt"), os.path.join(killed, "last.pt"))
    _assert_same_models(os.path.join(full, "best.pt"), os.path.join(killed, "best.pt"))
    assert _records(full) == _records(killed)
    assert json.loads(reference.stdout.strip().splitlines()[-1])["test"] == \
        json.loads(resumed.stdout.strip().splitlines()[-1])["test"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_writes_last_pt_and_the_resume_is_bitwise_identical(data_dir, tmp_path, signum):
    """No periodic checkpoints: what the signal's own last.pt keeps is all there is to resume from."""
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")

    def command(out):
        argv = _train_cmd(data_dir, out)
        i = argv.index("--checkpoint-every")
        return argv[:i] + argv[i + 2:]

    reference = subprocess.run(command(full), env=_env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = subprocess.Popen(command(stopped), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(stopped, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):  # epoch 1 is done; 2 more to go
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "last.pt written" in err
    assert f"--resume {stopped}" in err and "Traceback" not in err
    state = read_checkpoint(os.path.join(stopped, "last.pt"))["trainer"]
    assert 1 <= state["epoch"] < 3, state  # stopped in the middle of the run, after epoch 1

    resumed = subprocess.run([sys.executable, "-m", "fastvae", "train", "--resume", stopped, "--no-progress",
                              "--json", "--examples", "0"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_models(os.path.join(full, "last.pt"), os.path.join(stopped, "last.pt"))
    _assert_same_models(os.path.join(full, "best.pt"), os.path.join(stopped, "best.pt"))
    assert _records(full) == _records(stopped)
    assert json.loads(reference.stdout.strip().splitlines()[-1])["test"] == \
        json.loads(resumed.stdout.strip().splitlines()[-1])["test"]


FAST = dict(config="tiny", progress=False, verbose=False, iw_samples=2, eval_batch_size=64, batch_size=16)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(None, corpus, recipe="vae", out_dir=str(out), epochs=2, checkpoint_every=2, seed=1, **FAST)
    steps_per_epoch = len(trainer._epoch_batches())
    bad_step = steps_per_epoch + 3  # in the second epoch, after good epoch-end and mid-epoch checkpoints
    original = trainer.compute_loss

    def poisoned(batch, kl_weight):
        result = original(batch, kl_weight)
        if trainer.global_step >= bad_step:
            result = dataclasses.replace(result, loss=result.loss * float("nan"),
                                         stats={**result.stats, "loss_sum": result.stats["loss_sum"] * float("nan")})
        return result

    monkeypatch.setattr(trainer, "compute_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=f"step {bad_step}") as info:
        trainer.fit()
    assert "last good checkpoint" in str(info.value)
    for name in ("last.pt", "best.pt"):
        ckpt = read_checkpoint(str(out / name))
        assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point()), name
    last = read_checkpoint(str(out / "last.pt"))["trainer"]
    assert last["global_step"] <= bad_step
    # the kept checkpoint is usable: the run resumes from it (and, unpoisoned, finishes)
    Trainer(None, corpus, recipe="vae", out_dir=str(out), epochs=2, checkpoint_every=2, seed=1,
            **FAST).fit(resume=str(out))
    assert read_checkpoint(str(out / "last.pt"))["trainer"]["epoch"] == 2


def test_trainer_from_checkpoint_continues_the_run_bitwise(corpus, tmp_path):
    # one process: 2 of 3 epochs, then a trainer rebuilt from last.pt alone finishes the run; its records and
    # weights equal an uninterrupted 3-epoch run's
    options = dict(recipe="cyclical", cycles=2, epochs=3, seed=4, mi_batch_size=8, **FAST)
    whole = Trainer(None, corpus, out_dir=str(tmp_path / "whole"), **options)
    whole.fit()
    def stop_in_the_third_epoch(trainer):  # as a crash would: last.pt holds the end of epoch 2
        if trainer.global_step == 2 * steps_per_epoch + 2:
            raise RuntimeError("stopped on purpose")

    part = Trainer(None, corpus, out_dir=str(tmp_path / "part"), step_callbacks=[stop_in_the_third_epoch], **options)
    steps_per_epoch = len(part._epoch_batches())
    with pytest.raises(RuntimeError, match="on purpose"):
        part.fit()
    again = Trainer.from_checkpoint(str(tmp_path / "part"), corpus)
    assert again.cfg.mi_batch_size == 8 and again.recipe.name == "cyclical" and again.cfg.recipe_options["cycles"] == 2
    assert again.out_dir == str(tmp_path / "part")
    again.fit()
    assert [r["epoch"] for r in again.history] == [r["epoch"] for r in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    torch.save({"format_version": 3, "model": {}}, tmp_path / "model_only.pt")
    with pytest.raises(ValueError):
        Trainer.from_checkpoint(str(tmp_path / "model_only.pt"), corpus)


def test_the_run_progress_is_saved_and_restored_as_one_object(corpus, tmp_path):
    """Every RunProgress field is in the checkpoint's training state and comes back from it; the trainer's
    attributes are the progress object's (one copy); a state that lacks a field is refused, naming it."""
    from fastvae.training.run_state import RunProgress

    trainer = Trainer(None, corpus, out_dir=str(tmp_path / "run"), recipe="vae", epochs=2, seed=3, **FAST)
    trainer.fit()
    state = read_checkpoint(str(tmp_path / "run" / "last.pt"))["trainer"]
    assert set(RunProgress.field_names()) <= set(state)
    assert state["global_step"] == trainer.global_step == trainer.progress.global_step > 0
    assert state["history"] == trainer.history[:len(state["history"])] and state["best_epoch"] == trainer.best_epoch
    trainer.epoch = 7
    assert trainer.progress.epoch == 7
    restored = RunProgress()
    restored.load_state_dict(state)
    assert restored.state_dict() == {name: state[name] for name in RunProgress.field_names()}
    partial = {k: v for k, v in state.items() if k != "position"}
    with pytest.raises(ValueError, match="lacks position"):
        RunProgress().load_state_dict(partial)
