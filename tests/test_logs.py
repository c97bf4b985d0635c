"""fastvae's messages go through logging (fastvae.logs): the trainer's lines reach the user's handlers, fastvae
prints on its own only while a verbose fit() runs with nothing else configured, and progress is written as whole
lines when the output is not a terminal."""
import logging

import pytest

from fastvae import logs
from fastvae.cli import main
from fastvae.training import Trainer

FAST = dict(config="tiny", epochs=1, iw_samples=2, eval_batch_size=64, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def corpus():
    from fastvae.data.builtin import grammar_corpus

    return grammar_corpus(seed=5, n_train=600, n_valid=100, n_test=100)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _no_root_handlers(monkeypatch):
    # pytest's own logging plugin puts handlers on the root logger; a user's script has none
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_a_verbose_fit_prints_its_lines_and_leaves_no_handler_behind(corpus, capsys, monkeypatch):
    _no_root_handlers(monkeypatch)
    Trainer(None, corpus, recipe="vae", **FAST).fit()
    out = capsys.readouterr().out
    assert "fastvae train: recipe vae" in out and "\nepoch   1/1 |" in out and "test metrics" in out
    assert logs.logger.handlers == []


def test_a_quiet_trainer_prints_nothing(corpus, capsys, monkeypatch):
    _no_root_handlers(monkeypatch)
    Trainer(None, corpus, recipe="vae", verbose=False, **FAST).fit()
    assert capsys.readouterr().out == ""


def test_the_users_handler_gets_the_lines_and_nothing_is_printed(corpus, capsys, monkeypatch):
    _no_root_handlers(monkeypatch)
    collect = Collect()
    logs.logger.addHandler(collect)
    logs.logger.setLevel(logging.INFO)
    try:
        Trainer(None, corpus, recipe="vae", **FAST).fit()
    finally:
        logs.logger.removeHandler(collect)
        logs.logger.setLevel(logging.NOTSET)
    messages = [r.getMessage() for r in collect.records]
    assert any(m.startswith("epoch   1/1 |") for m in messages)
    assert {r.name for r in collect.records} >= {"fastvae.train"}
    assert capsys.readouterr().out == ""


def test_progress_off_a_terminal_is_whole_lines_at_each_tenth(caplog):
    caplog.set_level(logging.INFO, logger="fastvae")
    bar = logs.LineProgress(total=316, initial=0, desc="train epoch 1/2")
    for i in range(316):
        if i == 100:
            bar.set_postfix(loss="3.25")
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and all("\r" not in line for line in lines)
    assert lines[0] == "train epoch 1/2: 32/316 (10%)" and lines[-1] == "train epoch 1/2: 316/316 (100%)  loss=3.25"
    resumed = logs.LineProgress(total=316, initial=200, desc="x")  # a resumed epoch: the next tenth, not all
    caplog.clear()
    resumed.update(3)
    assert [r.getMessage() for r in caplog.records] == []
    for _ in range(19):
        resumed.update(1)
    assert [r.getMessage() for r in caplog.records] == ["x: 222/316 (70%)"]


def test_cli_quiet_and_verbose_set_the_levels(tmp_path, capsys, monkeypatch):
    from fastvae import backend

    _no_root_handlers(monkeypatch)
    args = ["train", "--recipe", "vae", "--epochs", "1", "--iw-samples", "2", "--examples", "0", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "q"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "epoch" not in out and "run directory" in out
    monkeypatch.setattr(backend, "_REPORTED", set())  # each choice is reported once per process
    assert main(args + ["--out", str(tmp_path / "v"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "lstm_sequence on cpu tensors runs the" in out or "sample_and_kl on cpu tensors runs the" in out
    assert logs.logger.level == logging.NOTSET  # the command's level does not outlive it
    assert main(args + ["--quiet", "--verbose"]) == 2
    assert "--quiet and --verbose" in capsys.readouterr().err
