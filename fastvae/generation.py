"""Reconstructions, prior samples and latent interpolations from a trained TextVAE."""
from __future__ import annotations

import torch

STRATEGIES = ("greedy", "sample", "beam")


def _check_vae(model):
    from .models.protocol import check_can_generate, is_vae_model

    if not is_vae_model(model):
        raise ValueError("generation needs a VAE (a model with an encoder and a latent); "
                         "this checkpoint holds a language model without a latent")
    check_can_generate(model)


def encode_sentences(model, vocab, sentences, device="cpu"):
    """Whitespace-tokenised sentences -> (tokens [B, T], lengths [B]) as `<s> w1..wn </s>` padded."""
    from .data import BOS, EOS, PAD

    rows = []
    for i, sentence in enumerate(sentences):
        words = sentence.split() if isinstance(sentence, str) else list(sentence)
        if not words:
            raise ValueError(f"sentence {i} is empty: give at least one word")
        rows.append([BOS] + vocab.encode(words) + [EOS])
    longest = max(len(r) for r in rows)
    tokens = torch.full((len(rows), longest), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return tokens.to(device), lengths.to(device)


def _decode(model, vocab, z, strategy, max_len, temperature, top_k, beam_size, generator):
    from .data import BOS, EOS

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    ids = model.generate(z, BOS, EOS, max_len, strategy=strategy, temperature=temperature, top_k=top_k,
                                 beam_size=beam_size, generator=generator)
    return [vocab.decode(row) for row in ids]


@torch.no_grad()
def reconstruct(model, vocab, sentences, *, strategy="greedy", use_mean=True, max_len=40, temperature=1.0,
                top_k=0, beam_size=5, generator=None):
    """Encodes each sentence (z = posterior mean, or a posterior sample) and decodes it."""
    _check_vae(model)
    model.eval()
    device = next(model.parameters()).device
    tokens, lengths = encode_sentences(model, vocab, sentences, device)
    mu, logvar = model.encode(tokens, lengths)
    if use_mean:
        z = mu
    else:
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * (0.5 * logvar).exp()
    return _decode(model, vocab, z, strategy, max_len, temperature, top_k, beam_size, generator)


@torch.no_grad()
def sample_prior(model, vocab, num, *, strategy="greedy", max_len=40, temperature=1.0, top_k=0, beam_size=5,
                 generator=None):
    """Decodes `num` latent codes drawn from the prior N(0, I)."""
    _check_vae(model)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"number of samples must be a positive int, got {num!r}")
    model.eval()
    device = next(model.parameters()).device
    z = torch.randn(num, model.latent_dim, generator=generator, device=device)
    return _decode(model, vocab, z, strategy, max_len, temperature, top_k, beam_size, generator)


@torch.no_grad()
def interpolate(model, vocab, first, second, *, steps=5, strategy="greedy", max_len=40, temperature=1.0, top_k=0,
                beam_size=5, generator=None):
    """Decodes z = (1 - t) mu(first) + t mu(second) for `steps` evenly spaced t in [0, 1]."""
    _check_vae(model)
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"interpolation needs steps >= 2 (both end points), got {steps!r}")
    model.eval()
    device = next(model.parameters()).device
    tokens, lengths = encode_sentences(model, vocab, [first, second], device)
    mu, _ = model.encode(tokens, lengths)
    t = torch.linspace(0.0, 1.0, steps, device=device, dtype=mu.dtype).unsqueeze(1)
    z = (1 - t) * mu[0] + t * mu[1]
    return _decode(model, vocab, z, strategy, max_len, temperature, top_k, beam_size, generator)
