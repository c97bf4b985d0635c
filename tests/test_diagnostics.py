"""fastvae.diagnostics: the evaluation's latent metrics from any loop, collapse warnings, history, figure, and the
Lightning callback (skipped without lightning)."""
import importlib
import json
import logging
import math
import sys

import pytest
import torch

from fastvae import evaluate
from fastvae import functional as F
from fastvae.data import BUILTIN_CORPORA, make_batches
from fastvae.diagnostics import LatentDiagnostics
from fastvae.models import TextVAE

NZ = 8  # the "tiny" config's latent size


@pytest.fixture(scope="module")
def corpus():
    return BUILTIN_CORPORA["grammar"](seed=3, n_train=96, n_valid=75, n_test=8)


def spread_encoder_vae(vocab_size: int) -> TextVAE:
    """A tiny VAE whose encoder weights (fixed, whatever the test's seed) make mu vary across sentences in
    dimensions 0-4 (active, MI well above 0) and leave mu 0 in dimensions 5-7 (inactive)."""
    model = TextVAE(vocab_size, "tiny")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.uniform_(-1.0, 1.0, generator=generator)
        model.encoder.to_posterior.weight[5:NZ] = 0  # the mu half of the output: rows 0..NZ-1
    return model


def test_a_pass_over_the_split_gives_evaluate_metrics(corpus):
    """Rows of the evaluation's own batches, with their indices, and the generator in the state evaluate leaves it
    in before its MI draws: kl, mi, mi_batch, au and au_var equal bitwise."""
    model = spread_encoder_vae(len(corpus.vocab))
    valid = corpus.valid
    expected = evaluate(model, valid, batch_size=16, metrics=["kl", "mi", "mi_batch", "au"],
                        generator=torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    diagnostics = LatentDiagnostics()
    model.eval()
    with torch.no_grad():
        for batch in make_batches(valid, 16, mode="bucket", shuffle=False):
            mu, logvar = model.encode(batch.tokens, batch.lengths)
            F.reparameterize(mu, logvar, generator=generator)  # evaluate's one-sample rec term draws this per batch
            diagnostics.update(mu, logvar, batch.lengths, indices=batch.indices)
    got = diagnostics.compute(generator=generator)
    for key in ("kl", "mi", "mi_batch", "au", "au_var"):
        assert got[key] == expected[key], key
    assert got["num_sentences"] == expected["num_sentences"] == len(valid)
    assert got["au"] == 5 and got["active_dims"] == [0, 1, 2, 3, 4] and not got["collapsed"] and got["mi"] > 0.5
    assert sum(got["kl_per_dim"]) == pytest.approx(got["kl"], rel=1e-12)
    # measure() over shuffled padded batches: the indices restore the split's order (KL summed in another order)
    shuffled = make_batches(valid, 10, mode="padded", shuffle=True, generator=torch.Generator().manual_seed(0))
    measured = diagnostics.measure(model, shuffled)
    assert measured["kl"] == pytest.approx(expected["kl"], rel=1e-6)
    assert measured["au"] == expected["au"]
    torch.testing.assert_close(torch.tensor(measured["au_var"]), torch.tensor(expected["au_var"]), rtol=1e-5,
                               atol=1e-7)


def test_without_lengths_the_per_batch_estimator_takes_consecutive_rows():
    """He et al.'s calc_mi over batches of mi_batch_size rows in the order given: functional's per-batch form."""
    mu, logvar = torch.randn(70, 4), torch.randn(70, 4) * 0.3 - 1
    diagnostics = LatentDiagnostics(mi_batch_size=16)
    diagnostics.update(mu[:30], logvar[:30])
    diagnostics.update(mu[30:], logvar[30:])
    generator = torch.Generator().manual_seed(4)
    got = diagnostics.compute(generator=generator)
    reference = torch.Generator().manual_seed(4)
    whole = F.mutual_information(mu, logvar, generator=reference)
    per_batch = F.mutual_information(mu, logvar, batch_size=16, generator=reference)
    assert got["mi"] == float(whole)
    assert got["mi_batch"] == pytest.approx(float(per_batch), rel=1e-5, abs=1e-6)


def elbo_loss(model, tokens, lengths):
    mu, logvar = model.encode(tokens, lengths)
    z = F.reparameterize(mu, logvar)
    rec = model.reconstruction(tokens, lengths, z)
    kl = F.kl_per_dim(mu, logvar).sum(1)
    return (rec + kl).mean(), rec.detach(), kl.detach()


def test_a_plain_pytorch_loop(corpus, tmp_path):
    model = TextVAE(len(corpus.vocab), "tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    valid_batches = make_batches(corpus.valid, 32, mode="bucket", shuffle=False)
    diagnostics = LatentDiagnostics()
    step = 0
    for epoch in range(2):
        model.train()
        kls, elbos = [], []
        for batch in make_batches(corpus.train, 32, generator=torch.Generator().manual_seed(epoch))[:3]:
            loss, rec, kl = elbo_loss(model, batch.tokens, batch.lengths)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            kls.append(float(kl.mean()))
            elbos.append(float((rec + kl).mean()))
        diagnostics.record_training(step=step, kl=sum(kls) / len(kls), elbo=sum(elbos) / len(elbos))
        metrics = diagnostics.measure(model, valid_batches)
        assert model.training  # measure() restored the training flag
        record = diagnostics.end_epoch(step=step, epoch=epoch, elbo=metrics["kl"] + 1.0)
        assert record["split"] == "valid" and record["step"] == step and record["epoch"] == epoch
        assert len(record["kl_per_dim"]) == NZ and len(record["au_var"]) == NZ
        assert all(math.isfinite(record[k]) for k in ("kl", "mi", "mi_batch"))
        assert record["num_sentences"] == len(corpus.valid)
    assert [r["split"] for r in diagnostics.history] == ["train", "valid", "train", "valid"]
    assert diagnostics.num_sentences == 0  # end_epoch cleared the pass
    path = tmp_path / "training.png"
    diagnostics.plot(str(path), title="plain loop")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def collapsed_rows(n=40):
    """Every sentence has the same posterior: no active unit."""
    return torch.full((n, 3), 0.2), torch.full((n, 3), -0.5)


def spread_rows(n=40):
    mu = torch.linspace(-2, 2, n).unsqueeze(1).repeat(1, 3)
    return mu, torch.full((n, 3), -3.0)


def test_collapse_verdict_on_synthetic_posteriors():
    diagnostics = LatentDiagnostics()
    diagnostics.update(*collapsed_rows())
    flat = diagnostics.compute()
    assert flat["au"] == 0 and flat["collapsed"] and flat["active_dims"] == []
    diagnostics.reset()
    diagnostics.update(*spread_rows())
    spread = diagnostics.compute()
    assert spread["au"] == 3 and not spread["collapsed"] and spread["active_dims"] == [0, 1, 2]
    # the threshold decides: Var of linspace(-2, 2, 40) is about 1.42
    strict = LatentDiagnostics(au_threshold=2.0)
    strict.update(*spread_rows())
    assert strict.compute()["collapsed"]


def test_collapse_is_logged_once_when_it_happens_and_once_when_it_ends(caplog):
    caplog.set_level(logging.WARNING, logger="fastvae.diagnostics")
    diagnostics = LatentDiagnostics()
    sequence = [spread_rows, collapsed_rows, collapsed_rows, collapsed_rows, spread_rows, spread_rows]
    for epoch, rows in enumerate(sequence):
        diagnostics.update(*rows())
        diagnostics.end_epoch(epoch=epoch)
    messages = [r.getMessage() for r in caplog.records if r.name == "fastvae.diagnostics"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("posterior collapse at step 1 (epoch 1)") and "AU 0 of 3" in messages[0]
    assert messages[1].startswith("posterior no longer collapsed at step 4 (epoch 4)")
    assert [r["collapsed"] for r in diagnostics.history] == [False, True, True, True, False, False]


def test_state_dict_round_trip_keeps_history_and_verdict(caplog, tmp_path):
    diagnostics = LatentDiagnostics(mi_batch_size=8)
    diagnostics.update(*collapsed_rows())
    diagnostics.end_epoch(step=100, epoch=0, phase="pretrain")
    state = json.loads(json.dumps(diagnostics.state_dict()))  # plain values: any checkpoint format keeps them
    resumed = LatentDiagnostics(mi_batch_size=8)
    resumed.load_state_dict(state)
    assert resumed.history == diagnostics.history and resumed.collapsed is True
    caplog.set_level(logging.WARNING, logger="fastvae.diagnostics")
    caplog.clear()  # the first run's collapse warning
    resumed.update(*collapsed_rows())
    resumed.end_epoch(step=200, epoch=1)
    assert not [r for r in caplog.records if r.name == "fastvae.diagnostics"]  # still collapsed: nothing new
    assert len(resumed.history) == 2 and len(diagnostics.history) == 1  # no shared list
    with pytest.raises(ValueError, match="expected the dict of state_dict"):
        resumed.load_state_dict({"history": []})
    with pytest.raises(ValueError, match="'history' must be a list of dicts"):
        resumed.load_state_dict({"history": [1], "collapsed": None})


def test_plot_writes_a_png(tmp_path):
    diagnostics = LatentDiagnostics()
    with pytest.raises(ValueError, match="history is empty"):
        diagnostics.plot(str(tmp_path / "none.png"))
    for step, rows in ((10, spread_rows), (20, collapsed_rows)):
        diagnostics.record_training(step=step, kl=1.0, elbo=30.0)
        diagnostics.update(*rows())
        diagnostics.end_epoch(step=step, elbo=31.0)
    path = tmp_path / "figure.png"
    diagnostics.plot(str(path))
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def _update_twice(first, second):
    diagnostics = LatentDiagnostics()
    diagnostics.update(*first)
    diagnostics.update(*second)


@pytest.mark.parametrize("call, message", [
    (lambda: LatentDiagnostics().update(torch.zeros(4), torch.zeros(4)),
     r"mu must have shape \[batch, latent_dim\], got shape \(4,\)"),
    (lambda: LatentDiagnostics().update(torch.zeros(4, 3), torch.zeros(4, 2)),
     r"mu and logvar must have the same shape, got \(4, 3\) and \(4, 2\)"),
    (lambda: LatentDiagnostics().update(torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2)),
     r"update call 1\): mu has 1 non-finite value \(NaN/inf\) of 2"),
    (lambda: LatentDiagnostics().update(torch.zeros(2, 2), torch.full((2, 2), math.inf)),
     r"logvar has 4 non-finite values"),
    (lambda: _update_twice((torch.zeros(4, 3), torch.zeros(4, 3)), (torch.zeros(4, 5), torch.zeros(4, 5))),
     r"update call 2\): latent_dim changed from 3 to 5"),
    (lambda: LatentDiagnostics().update(torch.zeros(4, 3), torch.zeros(4, 3), [5, 5, 5]),
     r"3 lengths for 4 rows of mu"),
    (lambda: _update_twice((torch.zeros(2, 3), torch.zeros(2, 3), [4, 4]), (torch.zeros(2, 3), torch.zeros(2, 3))),
     r"earlier batches of this pass came with lengths"),
    (lambda: LatentDiagnostics().update(torch.zeros(2, 3), torch.zeros(2, 3), indices=[0, 1, 2]),
     r"3 indices for 2 rows"),
    (lambda: LatentDiagnostics().compute(), r"0 posterior rows collected; active units need at least 2"),
    (lambda: LatentDiagnostics(au_threshold=-1), r"au_threshold must be a number >= 0 .* got -1"),
    (lambda: LatentDiagnostics(mi_batch_size=0), r"mi_batch_size must be a positive int .* got 0"),
    (lambda: LatentDiagnostics().end_epoch(au=3), r"\['au'\] are the diagnostics' own record keys"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_repeated_indices_and_wrong_types_are_refused():
    diagnostics = LatentDiagnostics()
    diagnostics.update(torch.randn(3, 2), torch.zeros(3, 2), indices=[0, 1, 2])
    diagnostics.update(torch.randn(3, 2), torch.zeros(3, 2), indices=[2, 3, 4])
    with pytest.raises(ValueError, match=r"indices repeat \(6 rows, 5 distinct indices\)"):
        diagnostics.compute()
    with pytest.raises(TypeError, match="mu must be a torch.Tensor, got list"):
        LatentDiagnostics().update([[0.0]], torch.zeros(1, 1))
    with pytest.raises(TypeError, match="batch 0 is a str"):
        LatentDiagnostics().measure(lambda tokens, lengths: None, ["not a batch"])
    with pytest.raises(TypeError, match="expected a model with encode"):
        LatentDiagnostics().measure(object(), [])


def test_the_lightning_module_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # as if not installed: import fails
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "fastvae.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install fastvae\[lightning\]"):
        importlib.import_module("fastvae.integrations.lightning")


def test_lightning_callback_measures_each_validation_epoch(corpus, tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from fastvae.integrations.lightning import LatentDiagnosticsCallback

    class TinyVAEModule(pl.LightningModule):
        def __init__(self, vocab_size):
            super().__init__()
            self.model = TextVAE(vocab_size, "tiny")

        def training_step(self, batch, batch_idx):
            return elbo_loss(self.model, *batch)[0]

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val_loss", elbo_loss(self.model, *batch)[0])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    def loader(dataset):
        batches = [(b.tokens, b.lengths) for b in make_batches(dataset, 32, mode="bucket", shuffle=False)]
        return DataLoader(batches, batch_size=None)

    callback = LatentDiagnosticsCallback(plot_path=str(tmp_path / "latent.png"))
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=1, callbacks=[callback])
    module = TinyVAEModule(len(corpus.vocab))
    # two validation loaders: the first (valid) is measured, not the second (test)
    trainer.fit(module, loader(corpus.train), [loader(corpus.valid), loader(corpus.test)])
    history = callback.diagnostics.history
    assert [r["epoch"] for r in history] == [0, 1]  # the sanity check is not measured
    assert [r["step"] for r in history] == [2, 4]
    assert all(r["num_sentences"] == len(corpus.valid) for r in history)
    for key in ("kl", "mi", "mi_batch", "au", "collapsed"):
        assert float(trainer.callback_metrics[f"latent/{key}"]) == pytest.approx(float(history[-1][key]))
    assert (tmp_path / "latent.png").read_bytes()[:4] == b"\x89PNG"
    restored = LatentDiagnosticsCallback()
    restored.load_state_dict(callback.state_dict())
    assert restored.diagnostics.history == history
    with pytest.raises(ValueError, match="dataloader_idx must be None or an int >= 0, got -1"):
        LatentDiagnosticsCallback(dataloader_idx=-1)
