"""User errors end in one clear line and a non-zero exit; numbers too large to print are inf, not crashes.

- Perplexity of a finite but terrible model (loss per token past exp's range) is inf in training,
  `fastvae eval` and the JSON report (it used to raise OverflowError and lose the run).
- A diverging run (`--lr 1e6`) ends with one line that says what was kept (here: nothing), exit 3.
- `generate --input DIR`, a device that is not there: one line, exit 2.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastvae.cli import main
from fastvae.evaluation.metrics import perplexity
from fastvae.training.checkpoint import seal


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fastvae.data.builtin import grammar_corpus, write_corpus

    root = tmp_path_factory.mktemp("user-errors")
    data = root / "data"
    write_corpus(grammar_corpus(seed=5, n_train=48, n_valid=12, n_test=8), str(data))
    out = root / "run"
    assert main(["train", "--data", str(data), "--config", "tiny", "--recipe", "vae", "--epochs", "1",
                 "--batch-size", "16", "--iw-samples", "2", "--out", str(out), "--no-progress", "--json",
                 "--examples", "0"]) == 0
    return {"data": str(data), "out": str(out)}


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "fastvae", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line(proc, code):
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_perplexity_is_inf_past_exps_range_and_nan_without_tokens():
    assert perplexity(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    assert perplexity(710.0 * 10, 10) == math.inf
    assert perplexity(1e300, 1) == math.inf
    assert math.isnan(perplexity(float("nan"), 10))
    assert math.isnan(perplexity(5.0, 0))


def test_eval_of_a_finite_but_terrible_checkpoint_reports_inf(run, tmp_path, capsys):
    ckpt = torch.load(os.path.join(run["out"], "best.pt"), weights_only=True)
    ckpt["model"]["decoder.output.weight"].mul_(1e5)  # logits ~1e5: thousands of nats per token, all finite
    path = tmp_path / "terrible.pt"
    torch.save(seal(ckpt), path)
    assert main(["eval", "--checkpoint", str(path), "--data", run["data"], "--iw-samples", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(report["nll"]) and report["nll"] / report["num_tokens"] * report["num_sentences"] > 709
    assert report["ppl"] == math.inf


def test_a_diverging_run_is_one_line_that_says_nothing_was_kept(run, tmp_path):
    out = tmp_path / "diverged"
    err = _one_line(_cli("train", "--data", run["data"], "--config", "tiny", "--recipe", "vae", "--optimizer", "sgd",
                         "--lr", "1e6", "--clip", "0", "--epochs", "2", "--batch-size", "16", "--out", str(out),
                         "--no-progress", "--examples", "0"), 3)
    assert "training diverged" in err and "non-finite" in err
    assert "No checkpoint had been written yet" in err and "kept" not in err.replace("was not kept", "")
    assert not (out / "last.pt").exists()


def test_generate_from_a_directory_and_a_missing_device_are_one_line(run, tmp_path):
    best = os.path.join(run["out"], "best.pt")
    err = _one_line(_cli("generate", "--checkpoint", best, "--mode", "reconstruct", "--input", str(tmp_path)), 2)
    assert str(tmp_path) in err
    if not torch.cuda.is_available():
        for command in (["eval", "--checkpoint", best, "--data", run["data"]],
                        ["generate", "--checkpoint", best, "--num", "2"]):
            err = _one_line(_cli(*command, "--device", "cuda"), 2)
            assert "cuda" in err.lower()


def test_generate_uses_its_input_sentences_or_refuses_them(run, capsys):
    best = os.path.join(run["out"], "best.pt")
    assert main(["generate", "--checkpoint", best, "--sentences", "the cat sat", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["mode"] == "reconstruct" and report["results"][0]["input"] == "the cat sat"
    assert main(["generate", "--checkpoint", best, "--mode", "sample", "--sentences", "the cat sat"]) == 2
    assert "takes no input" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", best, "--num", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mode"] == "sample"


def test_a_full_disk_is_one_line_and_leaves_no_torn_file(run, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "full-disk"

    def no_space(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code = main(["train", "--data", run["data"], "--config", "tiny", "--recipe", "vae", "--epochs", "1",
                 "--batch-size", "16", "--iw-samples", "2", "--out", str(out), "--no-progress", "--examples", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    # the temporary file was removed; no checkpoint name points at a partial file
    assert sorted(os.listdir(out)) == [".fastvae.lock", "config.json", "metrics.jsonl"]
