"""The plain-PyTorch baseline every end-to-end benchmark compares against, and the benchmark text.

A small faithful copy of how the public reference code (He et al. 2019's text VAE; Li et al. 2019's
free bits on top) trains and evaluates the LSTM text VAE of recipes.md, written here so the
benchmarks need nothing but torch:
- `nn.LSTM` encoder (last hidden state -> Linear(H, 2nz, bias=False)) and decoder (c0 = Linear(z),
  h0 = tanh(c0), z concatenated to every input embedding, dropout 0.5 in and out, Linear(H, V)),
- eager losses (cross entropy per token, analytic KL, the fb=2 mask written out),
- `.item()` on the loss every step (the reference logs running sums on the host),
- every aggressive encoder sub-step is a full forward + backward (decoder weight gradients
  computed and thrown away), clipped over all parameters,
- IW-NLL one sentence at a time, 500 samples in chunks of 100, the encoder re-run per chunk.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS, EOS, UNK = 0, 1, 2, 3
LOG_2PI = math.log(2 * math.pi)


class ReferenceEncoder(nn.Module):
    def __init__(self, vocab, emb, hidden, latent):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.linear = nn.Linear(hidden, 2 * latent, bias=False)

    def forward(self, tokens):
        _, (last_state, _) = self.lstm(self.embed(tokens))
        mu, logvar = self.linear(last_state[-1]).chunk(2, -1)
        return mu, logvar


class ReferenceDecoder(nn.Module):
    def __init__(self, vocab, emb, hidden, latent, dropout_in=0.5, dropout_out=0.5):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, emb)
        self.dropout_in = nn.Dropout(dropout_in)
        self.dropout_out = nn.Dropout(dropout_out)
        self.lstm = nn.LSTM(emb + latent, hidden, batch_first=True)
        self.trans_linear = nn.Linear(latent, hidden, bias=False)
        self.pred_linear = nn.Linear(hidden, vocab, bias=False)

    def log_probability(self, tokens, z):
        """tokens [B, T+1] (<s> .. </s>), z [B, K, nz] -> log p(x | z) [B, K] (the reference repeats x K times)."""
        batch, samples, latent = z.shape
        inputs = tokens[:, :-1]
        targets = tokens[:, 1:]
        steps = inputs.shape[1]
        embedded = self.dropout_in(self.embed(inputs))
        embedded = embedded.unsqueeze(1).expand(batch, samples, steps, -1).reshape(batch * samples, steps, -1)
        z_flat = z.reshape(batch * samples, latent)
        word_and_z = torch.cat([embedded, z_flat.unsqueeze(1).expand(-1, steps, -1)], -1)
        c0 = self.trans_linear(z_flat).unsqueeze(0)
        output, _ = self.lstm(word_and_z, (torch.tanh(c0), c0))
        logits = self.pred_linear(self.dropout_out(output))
        targets = targets.unsqueeze(1).expand(batch, samples, steps).reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, self.vocab), targets, reduction="none")
        return -nll.view(batch, samples, steps).sum(-1)


class ReferenceVAE(nn.Module):
    def __init__(self, vocab, emb, hidden, latent, enc_hidden=None):
        super().__init__()
        self.latent = latent
        self.encoder = ReferenceEncoder(vocab, emb, enc_hidden or hidden, latent)
        self.decoder = ReferenceDecoder(vocab, emb, hidden, latent)
        for p in self.parameters():  # the reference init
            nn.init.uniform_(p, -0.01, 0.01)
        nn.init.uniform_(self.encoder.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.embed.weight, -0.1, 0.1)

    @staticmethod
    def kl_per_dim(mu, logvar):
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)

    def loss(self, tokens, kl_weight, fb_target=None):
        """(loss per sentence [B], rec [B], kl [B]); fb_target: Li et al.'s fb=2 mask at target/nz per dim."""
        mu, logvar = self.encoder(tokens)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = -self.decoder.log_probability(tokens, z.unsqueeze(1)).squeeze(1)
        kl_dim = self.kl_per_dim(mu, logvar)
        kl = kl_dim.sum(-1)
        if fb_target is None:
            return rec + kl_weight * kl, rec, kl
        mask = (kl_dim > fb_target / self.latent).float()
        return rec + kl_weight * (kl_dim * mask).sum(-1), rec, kl

    @torch.no_grad()
    def iw_nll_one(self, tokens, samples=500, chunk=100):
        """-log p(x) of one sentence [1, T+1] the reference way: chunks of `chunk` samples, encoder per chunk."""
        pieces = []
        for _ in range(samples // chunk):
            mu, logvar = self.encoder(tokens)
            std = (0.5 * logvar).exp()
            eps = torch.randn(mu.shape[0], chunk, mu.shape[1], device=mu.device)
            z = mu.unsqueeze(1) + eps * std.unsqueeze(1)
            log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_lik = self.decoder.log_probability(tokens, z)
            log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar.unsqueeze(1)).sum(-1)
            pieces.append(log_lik + log_prior - log_q)
        log_weights = torch.cat(pieces, -1)
        return -(torch.logsumexp(log_weights, -1) - math.log(log_weights.shape[-1]))


class ReferenceLM(nn.Module):
    """The LSTM language-model baseline of the reference code."""

    def __init__(self, vocab, emb, hidden, dropout=0.5):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, emb)
        self.dropout_in = nn.Dropout(dropout)
        self.dropout_out = nn.Dropout(dropout)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.pred_linear = nn.Linear(hidden, vocab, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.01, 0.01)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def loss(self, tokens):
        output, _ = self.lstm(self.dropout_in(self.embed(tokens[:, :-1])))
        logits = self.pred_linear(self.dropout_out(output))
        nll = F.cross_entropy(logits.reshape(-1, self.vocab), tokens[:, 1:].reshape(-1), reduction="none")
        return nll.view(tokens.shape[0], -1).sum(-1)


class ReferenceTrainer:
    """The reference training loop's step for each recipe (SGD, clip 5 over all parameters, separate
    encoder/decoder optimisers, a `.item()` per step)."""

    def __init__(self, model, lr=1.0, clip=5.0):
        self.model = model
        self.clip = clip
        if isinstance(model, ReferenceVAE):
            self.enc_opt = torch.optim.SGD(model.encoder.parameters(), lr=lr)
            self.dec_opt = torch.optim.SGD(model.decoder.parameters(), lr=lr)
        else:
            self.enc_opt = None
            self.dec_opt = torch.optim.SGD(model.parameters(), lr=lr)
        self.report_loss = 0.0

    def _zero(self):
        for opt in (self.enc_opt, self.dec_opt):
            if opt is not None:
                opt.zero_grad()

    def _backward(self, loss):
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)

    def lm_step(self, tokens):
        self._zero()
        loss = self.model.loss(tokens)
        self.report_loss += loss.sum().item()
        self._backward(loss)
        self.dec_opt.step()

    def joint_step(self, tokens, kl_weight, fb_target=None):
        self._zero()
        loss, _, _ = self.model.loss(tokens, kl_weight, fb_target)
        self.report_loss += loss.sum().item()
        self._backward(loss)
        self.enc_opt.step()
        self.dec_opt.step()

    def aggressive_step(self, tokens, kl_weight, sub_batches, window=15):
        """He et al.'s outer step: encoder-only sub-steps on the outer batch then on `sub_batches`, a stop
        check every `window` sub-steps, then one decoder-only step on the outer batch."""
        self.encoder_substeps(tokens, kl_weight, sub_batches, window)
        self._zero()
        loss, _, _ = self.model.loss(tokens, kl_weight)
        self.report_loss += loss.sum().item()
        self._backward(loss)
        self.dec_opt.step()

    def encoder_substeps(self, tokens, kl_weight, sub_batches, window=15):
        """The inner loop alone: each sub-step a full forward + backward (decoder gradients computed and
        discarded), clip over all parameters, encoder step, `.item()` of the loss."""
        previous, window_loss, window_words = 1e4, 0.0, 0
        for sub, batch in enumerate([tokens] + list(sub_batches), start=1):
            self._zero()
            loss, _, _ = self.model.loss(batch, kl_weight)
            window_loss += loss.sum().item()
            window_words += (batch.shape[1] - 1) * batch.shape[0]
            self._backward(loss)
            self.enc_opt.step()
            if sub % window == 0:
                current = window_loss / window_words
                if previous - current < 0:
                    break
                previous, window_loss, window_words = current, 0.0, 0


# ----------------------------------------------------------------------------- benchmark text
def synthetic_sentences(num: int, words: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """[num, words] word ids in [4, vocab): Zipf-distributed (like text), and the first rows cover every id
    once so a vocabulary built from them has exactly `vocab` entries."""
    if vocab <= 4 or words < 1 or num < 1:
        raise ValueError(f"need vocab > 4, words >= 1, num >= 1; got {vocab}, {words}, {num}")
    real = vocab - 4
    ranks = torch.arange(1, real + 1, dtype=torch.float64)
    ids = torch.multinomial((1.0 / ranks).float(), num * words, replacement=True, generator=generator) + 4
    ids = ids.view(num, words)
    cover = torch.randperm(real, generator=generator) + 4
    flat = ids.view(-1)
    flat[: min(real, flat.numel())] = cover[: min(real, flat.numel())]
    return ids


def with_markers(ids: torch.Tensor) -> torch.Tensor:
    """[N, n] word ids -> [N, n + 2] tokens <s> w1 .. wn </s>."""
    n = ids.shape[0]
    return torch.cat([torch.full((n, 1), BOS), ids, torch.full((n, 1), EOS)], 1)


def write_corpus_files(ids: torch.Tensor, directory: str, valid: int, test: int) -> None:
    """train/valid/test.txt from word ids (word `w<id>`), last rows for valid and test."""
    import os

    os.makedirs(directory, exist_ok=True)
    lines = [" ".join(f"w{i}" for i in row.tolist()) for row in ids]
    splits = {"train": lines[: len(lines) - valid - test], "valid": lines[len(lines) - valid - test: len(lines) - test],
              "test": lines[len(lines) - test:]}
    for name, rows in splits.items():
        with open(os.path.join(directory, f"{name}.txt"), "w") as handle:
            handle.write("\n".join(rows) + "\n")
