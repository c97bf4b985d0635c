"""Run directories cannot be clobbered: a finished run is refused without --overwrite, a second
process is refused while the first holds the directory, a killed process leaves no stale lock,
and a path that cannot be a directory is one clear line. Real `python -m fastvae` subprocesses."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from fastvae.training import Trainer
from fastvae.training.run_dir import LOCK_NAME, RunDirectoryError, open_run_directory

FAST = ["--config", "tiny", "--epochs", "1", "--batch-size", "16", "--iw-samples", "2", "--no-progress",
        "--json", "--examples", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fastvae.data.builtin import grammar_corpus, write_corpus

    path = tmp_path_factory.mktemp("rundir-data")
    write_corpus(grammar_corpus(seed=2, n_train=48, n_valid=12, n_test=8), str(path))
    return str(path)


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _fastvae(*args):
    return subprocess.run([sys.executable, "-m", "fastvae", *args], env=_env(), capture_output=True, text=True,
                          timeout=300)


def _digests(path):
    return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(path)) if name != LOCK_NAME}


def _user_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_a_finished_run_is_refused_then_replaced_only_with_overwrite(data_dir, tmp_path):
    out = str(tmp_path / "run")
    assert _fastvae("train", "--data", data_dir, "--out", out, "--seed", "1", *FAST).returncode == 0
    before = _digests(out)
    assert {"best.pt", "last.pt", "config.json", "metrics.jsonl"} <= set(before)
    err = _user_error(_fastvae("train", "--data", data_dir, "--out", out, "--seed", "2", *FAST))
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _digests(out) == before  # nothing was touched
    with open(os.path.join(out, "my-notes.txt"), "w") as handle:
        handle.write("mine\n")
    assert _fastvae("train", "--data", data_dir, "--out", out, "--seed", "2", "--overwrite", *FAST).returncode == 0
    after = _digests(out)
    assert after["best.pt"] != before["best.pt"]  # the new run's
    assert open(os.path.join(out, "my-notes.txt")).read() == "mine\n"  # not fastvae's: kept


def test_the_python_api_refuses_a_second_fresh_run_into_one_directory(tmp_path):
    from fastvae.data.builtin import grammar_corpus

    corpus = grammar_corpus(seed=4, n_train=32, n_valid=8, n_test=8)
    options = dict(recipe="vae", config="tiny", epochs=1, batch_size=16, iw_samples=0, progress=False, verbose=False)
    Trainer(None, corpus, out_dir=str(tmp_path), **options).fit()
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        Trainer(None, corpus, out_dir=str(tmp_path), **options).fit()
    Trainer(None, corpus, out_dir=str(tmp_path), overwrite=True, **options).fit()


def test_a_second_process_is_refused_and_a_killed_one_leaves_no_stale_lock(data_dir, tmp_path):
    out = tmp_path / "shared"
    # another process holds the run directory (fastvae's own lock), until it is killed with SIGKILL
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from fastvae.training.run_dir import open_run_directory\n"
                               f"open_run_directory({str(out)!r}, resume=False); print('locked', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = _user_error(_fastvae("train", "--data", data_dir, "--out", str(out), *FAST))
        assert "in use by another fastvae process" in err and f"pid {holder.pid}" in err
        with pytest.raises(RunDirectoryError, match="in use"):
            open_run_directory(str(out), resume=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(out / LOCK_NAME)  # the file stays; the lock went with the process
    assert _fastvae("train", "--data", data_dir, "--out", str(out), *FAST).returncode == 0


def test_a_real_run_holds_its_directory_while_it_trains(data_dir, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "fastvae", "train", "--data", data_dir, "--out", str(out),
                              *FAST[:2], "--epochs", "200", "--plateau-decay", "off", "--batch-size", "4",
                              "--iw-samples", "0",
                              "--no-progress", "--json", "--examples", "0"], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(out / "metrics.jsonl"):  # it is past its first epoch, and holds the lock
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        err = _user_error(_fastvae("train", "--data", data_dir, "--out", str(out), *FAST))
        assert "in use by another fastvae process" in err
        err = _user_error(_fastvae("train", "--resume", str(out), "--no-progress"))
        assert "in use by another fastvae process" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed mid-run: the directory is free at once for its resume (no stale lock)
    open_run_directory(str(out), resume=True).release()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_directory_is_one_clear_line(data_dir, tmp_path, where):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory\n")
    out = blocker if where == "a file" else blocker / "run"
    err = _user_error(_fastvae("train", "--data", data_dir, "--out", str(out), *FAST))
    assert str(out) in err
    assert blocker.read_text() == "not a directory\n"


def test_resume_refuses_options_it_would_ignore(data_dir, tmp_path):
    out = str(tmp_path / "run")
    assert _fastvae("train", "--data", data_dir, "--out", out, *FAST).returncode == 0
    for extra in (["--data", data_dir], ["--out", str(tmp_path / "elsewhere")], ["--overwrite"]):
        err = _user_error(_fastvae("train", "--resume", out, *extra, "--no-progress"))
        assert extra[0] in err and "would be ignored" in err


def test_resume_refuses_data_that_changed_unless_told(data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out = str(tmp_path / "run")
    assert _fastvae("train", "--data", str(data), "--out", out, *FAST).returncode == 0
    lines = (data / "train.txt").read_text().splitlines(keepends=True)
    (data / "train.txt").write_text("".join(reversed(lines)))  # same words, same vocabulary, another order
    err = _user_error(_fastvae("train", "--resume", out, "--no-progress"))
    assert "changed since the run started" in err and str(data / "train.txt") in err
    assert "same size" in err and "--allow-changed-data" in err
    proc = _fastvae("train", "--resume", out, "--allow-changed-data", "--no-progress", "--json", "--examples", "0")
    assert proc.returncode == 0, proc.stderr
    err = _user_error(_fastvae("train", "--data", str(data), "--allow-changed-data", *FAST))
    assert "goes with --resume" in err
