"""The command line: train / eval / generate, their --json output, and clear errors."""
import json
import os
import subprocess
import sys

import pytest

from fastvae.cli import main
from fastvae.data import BUILTIN_CORPORA
from fastvae.data.builtin import write_corpus


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(BUILTIN_CORPORA["grammar"](seed=2, n_train=120, n_valid=30, n_test=20), str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One short training run through the CLI, shared by the eval/generate tests."""
    out = str(tmp_path_factory.mktemp("run"))
    rc = main(["train", "--data", data_dir, "--config", "tiny", "--recipe", "vae", "--epochs", "1", "--out", out,
               "--iw-samples", "3", "--no-progress", "--examples", "0"])
    assert rc == 0
    return out


def last_json(capsys):
    text = capsys.readouterr().out.strip().splitlines()
    return json.loads(text[-1])


def test_train_json_and_run_directory(data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--data", data_dir, "--config", "tiny", "--recipe", "cyclical", "--cycles", "2",
               "--fb-mode", "dim", "--target-kl", "1.5", "--epochs", "1", "--out", out, "--iw-samples", "3",
               "--no-progress", "--json"])
    assert rc == 0
    result = last_json(capsys)
    assert result["out_dir"] == out and result["recipe"] == "cyclical"
    assert {"rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au"} <= set(result["test"])
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "training.png"} <= set(os.listdir(out))
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["recipe"]["options"]["fb_mode"] == "dim" and config["recipe"]["options"]["cycles"] == 2
    assert config["train"]["plateau_decay"] is None  # the recipe's default


def test_train_plateau_decay_flag(data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--data", data_dir, "--config", "tiny", "--recipe", "vae", "--epochs", "1", "--out", out,
               "--iw-samples", "2", "--plateau-decay", "OFF", "--no-progress", "--json"])
    assert rc == 0
    assert json.load(open(os.path.join(out, "config.json")))["train"]["plateau_decay"] is False
    with pytest.raises(SystemExit):
        main(["train", "--plateau-decay", "maybe"])
    assert "invalid choice" in capsys.readouterr().err


def test_train_prints_epoch_lines_table_and_examples(data_dir, tmp_path, capsys):
    rc = main(["train", "--train", os.path.join(data_dir, "train.txt"), "--valid", os.path.join(data_dir, "valid.txt"),
               "--test", os.path.join(data_dir, "test.txt"), "--config", "tiny", "--recipe", "pretrain-fb",
               "--target-kl", "2", "--epochs", "1", "--out", str(tmp_path / "r"), "--iw-samples", "2",
               "--no-progress", "--examples", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[pretrain] epoch   1/1" in text and "[fb] epoch   1/1" in text
    assert "test metrics" in text and "nll" in text
    assert "reconstructions" in text and "samples from the prior" in text and "interpolation" in text


def test_train_builtin_default_corpus_and_lm(tmp_path, capsys):
    rc = main(["train", "--recipe", "lm", "--epochs", "1", "--out", str(tmp_path / "lm"), "--no-progress", "--json"])
    assert rc == 0
    result = last_json(capsys)
    assert set(result["test"]) >= {"nll", "ppl"}
    config = json.load(open(tmp_path / "lm" / "config.json"))
    assert config["corpus"] == {"builtin": "grammar"} and config["model_config"]["name"] == "tiny"


def test_eval_json(trained, data_dir, capsys):
    rc = main(["eval", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir, "--iw-samples", "5",
               "--json"])
    assert rc == 0
    result = last_json(capsys)
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au"):
        assert key in result
    assert result["nll"] <= result["elbo"] + 1.0  # IW bound (K=5) is at least as tight, up to noise
    rc = main(["eval", "--checkpoint", os.path.join(trained, "best.pt"), "--data",
               os.path.join(data_dir, "valid.txt"), "--iw-samples", "2", "--metrics", "rec,kl"])
    assert rc == 0
    assert "rec" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["reconstruct", "sample", "interpolate"])
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_generate_json(trained, mode, strategy, capsys):
    args = ["generate", "--checkpoint", os.path.join(trained, "best.pt"), "--mode", mode, "--strategy", strategy,
            "--num", "3", "--max-len", "12", "--json"]
    if mode != "sample":
        args += ["--sentences", "the cat likes the food", "a dog sees the park"]
    assert main(args) == 0
    result = last_json(capsys)
    assert result["mode"] == mode
    rows = result["results"]
    assert len(rows) == {"reconstruct": 2, "sample": 3, "interpolate": 5}[mode]
    assert all(isinstance(r["output"], str) for r in rows)
    if mode == "interpolate":
        assert rows[0]["t"] == 0.0 and rows[-1]["t"] == 1.0


@pytest.mark.parametrize("args,match", [
    (["train", "--data", "x", "--train", "y"], "conflicting"),
    (["train", "--train", "y"], "go together"),
    (["train", "--recipe", "vae", "--cycles", "3"], "do not apply"),
    (["train", "--recipe", "vae", "--target-kl", "3"], "conflicting"),
    (["train", "--corpus", "wikipedia"], "unknown built-in corpus"),
    (["train", "--config", "gigantic", "--epochs", "1"], "gigantic"),
    (["train", "--data", "/nonexistent/dir"], "nonexistent"),
    (["eval", "--checkpoint", "/nonexistent.pt"], "does not exist"),
])
def test_clear_errors(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error" in err and match in err


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "sa-vae"])
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--recipe" in proc.stdout and "--precision" in proc.stdout


def test_threads_option_sets_torchs_thread_count_and_is_recorded(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", "--epochs", "1", "--threads", "1",
                           "--iw-samples", "0", "--out", str(out), "--no-progress", "--json", "--examples", "0"],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WORLD_SIZE")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["torch_threads"] == 1
    bad = subprocess.run([sys.executable, "-m", "fastvae", "eval", "--checkpoint", str(out / "best.pt"),
                          "--threads", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--threads" in bad.stderr


def test_ptb_script_trains_fu_et_als_model_and_mi_batch_size_is_reported(data_dir, tmp_path, capsys):
    # cyclical's ptb-script variant reproduces Fu et al.'s script: their own model unless --config says otherwise
    import torch

    out = str(tmp_path / "script")
    rc = main(["train", "--data", data_dir, "--recipe", "cyclical", "--variant", "ptb-script", "--epochs", "1",
               "--out", out, "--iw-samples", "2", "--mi-batch-size", "16", "--no-progress", "--json"])
    assert rc == 0
    result = last_json(capsys)
    assert result["recipe"] == "cyclical"
    checkpoint = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert checkpoint["model_config"]["name"] == "ptb-fu2019" and checkpoint["model_config"]["family"] == "fu2019"
    assert "decoder.output.bias" in checkpoint["model"] and "decoder.latent_to_hidden.bias" in checkpoint["model"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["train"]["mi_batch_size"] == 16 and config["train"]["epochs"] == 1
    rc = main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--data", data_dir, "--iw-samples", "2",
               "--mi-batch-size", "4", "--json"])
    assert rc == 0
    assert last_json(capsys)["mi_estimators"]["mi_batch"] == "per batch of 4"
    assert main(["generate", "--checkpoint", os.path.join(out, "best.pt"), "--mode", "sample", "--num", "2",
                 "--json"]) == 0
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--mi-batch-size", "0"])
    assert "--mi-batch-size" in capsys.readouterr().err


def test_eval_reconstruction_bleu(trained, data_dir, capsys):
    pytest.importorskip("sacrebleu", reason="reconstruction BLEU needs the optional extra fastvae[bleu]")
    rc = main(["eval", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir, "--iw-samples", "2",
               "--metrics", "rec,kl", "--bleu", "--beam-size", "2", "--json"])
    assert rc == 0
    result = last_json(capsys)
    for key in ("bleu_greedy_mean", "bleu_beam_mean", "bleu_greedy_sample", "bleu_beam_sample"):
        assert 0.0 <= result[key] <= 100.0, key
    rc = main(["eval", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir, "--iw-samples", "2",
               "--metrics", "rec", "--bleu"])
    assert rc == 0 and "bleu_beam_sample" in capsys.readouterr().out


def test_probe_semi_supervised_classification(trained, data_dir, capsys):
    rc = main(["probe", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir, "--num-labels", "10,40",
               "--epochs", "2", "--json"])
    assert rc == 0
    result = last_json(capsys)
    assert result["encoder"] == "frozen" and [r["num_labels"] for r in result["results"]] == [10, 40]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in result["results"])
    rc = main(["probe", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir, "--num-labels", "5",
               "--epochs", "1", "--classifier", "mlp", "--finetune"])
    assert rc == 0 and "5 labels: test accuracy" in capsys.readouterr().out
    assert main(["probe", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir,
                 "--num-labels", "100000"]) == 2
    assert "more than the 120 sentences" in capsys.readouterr().err
    assert main(["probe", "--checkpoint", os.path.join(trained, "best.pt"), "--data", data_dir,
                 "--num-labels", "ten"]) == 2
    assert "comma-separated positive ints" in capsys.readouterr().err
