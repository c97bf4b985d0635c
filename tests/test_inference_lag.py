"""He et al.'s inference-lag picture: the grid posterior mean on a case with a known answer, the tracker as a
Trainer callback that leaves training unchanged, the figure and the command."""
import json
import math
import os

import pytest
import torch

from fastvae.cli import main
from fastvae.data import synthetic_corpus
from fastvae.evaluation.inference_lag import (PosteriorTracker, latent_grid, plot_inference_lag,
                                              true_posterior_mean)
from fastvae.models import TextVAE
from fastvae.training import Trainer


class GaussianLikelihood(torch.nn.Module):
    """p(x|z) = N(c_x; z, s^2 I) with c_x read off the sentence: with the prior N(0, I) the true posterior is
    N(c_x / (1 + s^2), s^2 / (1 + s^2) I), so its mean is known in closed form."""

    latent_dim = 2

    def __init__(self, s):
        super().__init__()
        self.s = s
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def centre(self, tokens):
        return torch.stack([(tokens[:, 1] - 10).float() / 4, (tokens[:, 2] - 10).float() / 5], dim=1)

    def reconstruction(self, tokens, lengths, z):  # -log p(x|z) up to a constant, [B, M]
        return 0.5 * (z - self.centre(tokens).unsqueeze(1)).pow(2).sum(-1) / self.s ** 2


@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_grid_posterior_mean_is_the_gaussian_answer(s):
    tokens = torch.tensor([[1, 10, 10, 2], [1, 14, 5, 2], [1, 3, 17, 2], [1, 16, 19, 2]])
    model = GaussianLikelihood(s)
    got = true_posterior_mean(model, tokens, torch.full((4,), 4), extent=6.0, points=241, chunk=5000)
    want = model.centre(tokens) / (1 + s ** 2)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    # chunking the grid changes nothing
    torch.testing.assert_close(true_posterior_mean(model, tokens, torch.full((4,), 4), extent=6.0, points=241,
                                                   chunk=97), got, atol=1e-6, rtol=0)


def test_grid_and_latent_checks():
    assert latent_grid(2.0, 3).tolist()[:3] == [[-2.0, -2.0], [-2.0, 0.0], [-2.0, 2.0]]
    with pytest.raises(ValueError, match="points must be an int >= 2"):
        latent_grid(1.0, 1)
    with pytest.raises(ValueError, match="extent must be a positive number"):
        latent_grid(-1.0, 5)
    with pytest.raises(ValueError, match="2-dimensional latent"):
        true_posterior_mean(TextVAE(20, "tiny"), torch.tensor([[1, 5, 2]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="every must be a positive int"):
        PosteriorTracker(synthetic_corpus(n_train=2, n_valid=2, n_test=2, vocab_size=20).valid, every=0)


def test_tracker_records_and_leaves_training_unchanged(tmp_path):
    corpus = synthetic_corpus(seed=1, n_train=48, n_valid=8, n_test=8, vocab_size=30, length=5)
    common = dict(recipe="vae", config="synthetic", epochs=1, seed=3, iw_samples=0, progress=False, verbose=False)
    plain = Trainer(None, corpus, **common)
    plain.fit()
    tracker = PosteriorTracker(corpus.valid, every=2, points=9)
    tracked = Trainer(None, corpus, step_callbacks=[tracker], **common)
    tracked.fit()
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, tracked.model.state_dict()[name]), name
    assert [r["step"] for r in tracker.records] == [0] + list(range(2, tracked.global_step + 1, 2))
    assert all(r["approx"].shape == r["true"].shape == (8, 2) for r in tracker.records)
    assert all(math.isfinite(g) and g >= 0 for _, g in tracker.gaps())
    png = plot_inference_lag({"vae": tracker, "again": tracker}, str(tmp_path / "lag.png"), panels=3)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="step_callbacks must be callables"):
        Trainer(None, corpus, step_callbacks=[3], **common)
    with pytest.raises(ValueError, match="at least one record"):
        plot_inference_lag({"x": PosteriorTracker(corpus.valid)}, str(tmp_path / "none.png"))


def test_lag_command(tmp_path, capsys):
    out = tmp_path / "lag"
    rc = main(["lag", "--out", str(out), "--epochs", "1", "--train-sentences", "40", "--sentences", "4",
               "--every", "2", "--grid", "9", "--threads", "1"])
    assert rc == 0
    assert {"inference_lag.png", "inference_lag.json", "inference_lag.pt"} <= set(os.listdir(out))
    summary = json.load(open(out / "inference_lag.json"))
    assert set(summary["recipes"]) == {"vae", "aggressive"} and summary["options"]["grid"] == 9
    assert "mean |E_q - E_p|" in capsys.readouterr().out
    assert main(["lag", "--out", str(out), "--recipes", "lm"]) == 2
    assert "expected VAE recipes" in capsys.readouterr().err
