"""The ptb-fu2019 model against a hand-built reading of Fu et al.'s PTB script (language_model/models_text.py,
RNNVAE in 'vae' mode, and the loss of train_text_cyc_ptb.py), in float64 on the same weights."""
import pytest
import torch
from torch import nn

from fastvae import functional as F
from fastvae.data import BOS, EOS, make_batches
from fastvae.data.builtin import grammar_corpus
from fastvae.models import TextVAE
from fastvae.models.config import CONFIGS, ModelConfig, get_config

SMALL = ModelConfig("small-fu2019", 12, 16, 14, 5, 8, family="fu2019")
LSTM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class ScriptVAE(nn.Module):
    """Fu et al.'s RNNVAE as their script builds it: encoder embedding + LSTM, mean and log-variance layers with
    biases on the last state; decoder input [dropout(embedding); z] at every step, h0 = Linear(z) + b, c0 = 0,
    then dropout, Linear(H, V) with a bias and log-softmax."""

    def __init__(self, V, cfg):
        super().__init__()
        self.enc_word_vecs = nn.Embedding(V, cfg.emb_dim)
        self.enc_rnn = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, batch_first=True)
        self.latent_linear_mean = nn.Linear(cfg.enc_hidden, cfg.latent_dim)
        self.latent_linear_logvar = nn.Linear(cfg.enc_hidden, cfg.latent_dim)
        self.dec_word_vecs = nn.Embedding(V, cfg.emb_dim)
        self.dec_rnn = nn.LSTM(cfg.emb_dim + cfg.latent_dim, cfg.dec_hidden, batch_first=True)
        self.dec_linear = nn.Linear(cfg.dec_hidden, V)
        self.latent_hidden_linear = nn.Linear(cfg.latent_dim, cfg.dec_hidden)

    def copy_from(self, model: TextVAE):
        enc, dec, nz = model.encoder, model.decoder, model.latent_dim
        with torch.no_grad():
            self.enc_word_vecs.weight.copy_(enc.embed.weight)
            for name in LSTM_NAMES:
                getattr(self.enc_rnn, name).copy_(getattr(enc.lstm, name))
                getattr(self.dec_rnn, name).copy_(getattr(dec, name))
            self.latent_linear_mean.weight.copy_(enc.to_posterior.weight[:nz])
            self.latent_linear_mean.bias.copy_(enc.to_posterior.bias[:nz])
            self.latent_linear_logvar.weight.copy_(enc.to_posterior.weight[nz:])
            self.latent_linear_logvar.bias.copy_(enc.to_posterior.bias[nz:])
            self.dec_word_vecs.weight.copy_(dec.embed.weight)
            self.dec_linear.weight.copy_(dec.output.weight)
            self.dec_linear.bias.copy_(dec.output.bias)
            self.latent_hidden_linear.weight.copy_(dec.latent_to_hidden.weight)
            self.latent_hidden_linear.bias.copy_(dec.latent_to_hidden.bias)

    def loss(self, sents, eps, beta):
        """train_text_cyc_ptb.py: sum over positions of NLLLoss (the batch mean) + beta x the batch-mean KL."""
        states, _ = self.enc_rnn(self.enc_word_vecs(sents))
        mean, logvar = self.latent_linear_mean(states[:, -1]), self.latent_linear_logvar(states[:, -1])
        z = eps * (0.5 * logvar).exp() + mean
        words = self.dec_word_vecs(sents[:, :-1])
        inputs = torch.cat([words, z.unsqueeze(1).expand(-1, words.shape[1], -1)], dim=2)
        h0 = self.latent_hidden_linear(z).unsqueeze(0)
        memory, _ = self.dec_rnn(inputs, (h0, torch.zeros_like(h0)))
        preds = torch.log_softmax(self.dec_linear(memory), dim=-1)
        nll = sum(nn.functional.nll_loss(preds[:, t], sents[:, t + 1]) for t in range(preds.shape[1]))
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum() / sents.shape[0]
        return nll + beta * kl, (mean, logvar)

    def grads(self, model: TextVAE):
        """This module's gradients under fastvae's parameter names."""
        nz = model.latent_dim
        g = {"encoder.embed.weight": self.enc_word_vecs.weight.grad,
             "encoder.to_posterior.weight": torch.cat([self.latent_linear_mean.weight.grad,
                                                       self.latent_linear_logvar.weight.grad]),
             "encoder.to_posterior.bias": torch.cat([self.latent_linear_mean.bias.grad,
                                                     self.latent_linear_logvar.bias.grad]),
             "decoder.embed.weight": self.dec_word_vecs.weight.grad,
             "decoder.output.weight": self.dec_linear.weight.grad, "decoder.output.bias": self.dec_linear.bias.grad,
             "decoder.latent_to_hidden.weight": self.latent_hidden_linear.weight.grad,
             "decoder.latent_to_hidden.bias": self.latent_hidden_linear.bias.grad}
        for name in LSTM_NAMES:
            g[f"encoder.lstm.{name}"] = getattr(self.enc_rnn, name).grad
            g[f"decoder.{name}"] = getattr(self.dec_rnn, name).grad
        assert len(g) == len(dict(model.named_parameters())) and nz > 0
        return g


@pytest.fixture(scope="module")
def corpus():
    return grammar_corpus(seed=3, n_train=120, n_valid=10, n_test=10)


def test_fu2019_config_and_init():
    cfg = get_config("ptb-fu2019")
    assert (cfg.emb_dim, cfg.enc_hidden, cfg.dec_hidden, cfg.latent_dim, cfg.batch_size) == (256, 256, 256, 32, 32)
    assert cfg.family == "fu2019" and CONFIGS["ptb"].family == "he2019"
    model = TextVAE(500, "ptb-fu2019")
    for name, p in model.named_parameters():  # the script: every parameter U(-0.1, 0.1)
        assert p.abs().max() <= 0.1 and p.abs().max() > 0.09, name
    assert model.encoder.to_posterior.bias is not None and model.decoder.output.bias is not None
    assert not hasattr(model.decoder, "latent_to_cell")
    he = TextVAE(500, "ptb")
    assert he.encoder.to_posterior.bias is None and he.decoder.output.bias is None
    with pytest.raises(ValueError, match="family must be one of"):
        ModelConfig("x", 8, 8, 8, 2, 4, family="kim2018")
    assert ModelConfig.from_dict({k: v for k, v in CONFIGS["ptb"].to_dict().items() if k != "family"}).family \
        == "he2019"  # configs written before the field existed


@pytest.mark.parametrize("beta", [0.1, 0.55, 1.0])
def test_fu2019_loss_and_gradients_match_the_script_in_float64(corpus, beta, fresh_seed):
    torch.manual_seed(fresh_seed)
    model = TextVAE(len(corpus.vocab), SMALL).double().eval()  # eval: no dropout (the masks are the only noise)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.4, 0.4)
    script = ScriptVAE(len(corpus.vocab), SMALL).double().eval()
    script.copy_from(model)
    # the script's batches: sentences of one length (no padding)
    batch = max(make_batches(corpus.train, 8, mode="bucket", shuffle=False), key=lambda b: b.size)
    eps = torch.randn(batch.size, SMALL.latent_dim, dtype=torch.float64)

    mu, logvar = model.encode(batch.tokens, batch.lengths)
    z = mu + (0.5 * logvar).exp() * eps
    rec_loss, rec = model.reconstruction_loss(batch.tokens, batch.lengths, z, scale=1.0 / batch.size)
    loss = rec_loss + beta * F.kl_per_dim(mu, logvar).sum(1).mean()
    loss.backward()
    want, (mean, want_logvar) = script.loss(batch.tokens, eps, beta)
    want.backward()
    torch.testing.assert_close(mu, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logvar, want_logvar, rtol=1e-10, atol=1e-12)
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
    # the per-sentence reconstruction (IW-NLL and evaluation path) agrees with the training loss
    torch.testing.assert_close(model.reconstruction(batch.tokens, batch.lengths, z), rec.double(),
                               rtol=1e-10, atol=1e-9)
    grads = script.grads(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_fu2019_generation_starts_from_its_own_state(corpus):
    torch.manual_seed(0)
    model = TextVAE(len(corpus.vocab), SMALL).double().eval()
    z = torch.randn(3, SMALL.latent_dim, dtype=torch.float64)
    h0, c0 = model.decoder.initial_state(z)
    torch.testing.assert_close(h0, model.decoder.latent_to_hidden(z))
    assert torch.equal(c0, torch.zeros_like(c0))
    # greedy decoding step by step picks the argmax of the teacher-forced logits of its own prefix
    out = model.decoder.generate(z, bos_id=BOS, eos_id=EOS, max_len=6)
    assert len(out) == 3 and all(len(s) <= 6 for s in out)
    for row, tokens in enumerate(out):
        prefix = torch.tensor([[BOS] + tokens], dtype=torch.long)
        logits = model.decoder(prefix, z[row:row + 1])[0]
        picks = logits.argmax(-1).tolist()
        assert picks[:len(tokens)] == tokens
        if len(tokens) < 6:
            assert picks[len(tokens)] == EOS
