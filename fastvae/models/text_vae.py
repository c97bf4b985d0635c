"""The LSTM text VAE of the recipes (recipes.md) and its LSTM language-model baseline."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.vocab import PAD
from ..kernels.dtypes import compute_dtype
from ..nn.decoder import LSTMDecoder
from ..nn.dropout import Dropout
from .config import ModelConfig, get_config

if TYPE_CHECKING:
    from ..nn.precision import WeightCopies


def _check_batch(who: str, tokens: torch.Tensor, lengths: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"{who}: tokens must be a [batch, time] LongTensor, got "
                         + (f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor)
                            else repr(tokens)))
    if tokens.shape[1] < 2:
        raise ValueError(f"{who}: sentences need at least <s> and </s> (time >= 2), got {tuple(tokens.shape)}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (tokens.shape[0],):
        raise ValueError(f"{who}: lengths must be a [batch] tensor matching tokens {tuple(tokens.shape)}")
    if lengths.device != tokens.device:
        raise ValueError(f"{who}: tokens are on {tokens.device} but lengths on {lengths.device}")


FU2019_INIT_RANGE = 0.1


def _reference_init(module: nn.Module) -> None:
    """Reference init: parameters U(-0.01, 0.01), embeddings U(-0.1, 0.1)."""
    for p in module.parameters():
        nn.init.uniform_(p, -0.01, 0.01)
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, -0.1, 0.1)


class LSTMEncoder(nn.Module):
    """Embedding -> 1-layer LSTM -> last hidden state -> Linear(nh, 2 nz) -> (mu, logvar); the linear layer has no
    bias in He et al.'s model, one in Fu et al.'s (`posterior_bias`)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int, posterior_bias: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden_dim, batch_first=True)
        self.to_posterior = nn.Linear(hidden_dim, 2 * latent_dim, bias=bool(posterior_bias))
        self.weight_copies: WeightCopies | None = None  # set_compute_dtype(torch.bfloat16)

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """None: nn.LSTM in float32. torch.bfloat16: the same LSTM (its parameters) on fastvae's compiled recurrence,
        its GEMMs on bfloat16 weight copies cast once per optimiser step; state and gradients float32."""
        from ..nn.precision import WeightCopies

        self.weight_copies = None if dtype is None else WeightCopies(dtype)

    def _low_precision_states(self, tokens: torch.Tensor) -> torch.Tensor:
        from ..nn.precision import _LowPrecisionLinear
        from ..ops.lstm_sequence import lstm_sequence

        copies = self.weight_copies
        assert copies is not None, "set_compute_dtype() sets the copies before this path runs"
        weight_ih, weight_hh, bias_ih, bias_hh = self.lstm.all_weights[0]  # the one layer's parameters
        input_gates = _LowPrecisionLinear.apply(self.embed(tokens), weight_ih, bias_ih + bias_hh,
                                                copies.get(weight_ih))
        B, H = tokens.shape[0], self.lstm.hidden_size
        zeros = input_gates.new_zeros(B, 1, H)
        h_all, _ = lstm_sequence(input_gates, input_gates.new_zeros(B, 1, 4 * H), zeros, zeros, weight_hh,
                                 copies.get(weight_hh))
        return h_all.squeeze(1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        if self.weight_copies is not None:
            outputs = self._low_precision_states(tokens)
        else:
            outputs, _ = self.lstm(self.embed(tokens))
        # The LSTM is causal, so the output at the last real position ignores the padding after it:
        # gathering there is exact for padded batches and needs no host sync.
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
        hidden = outputs.gather(1, last).squeeze(1)
        mu, logvar = self.to_posterior(hidden).chunk(2, dim=-1)
        return mu, logvar


class TextVAE(nn.Module):
    """LSTM encoder, fastvae.nn.LSTMDecoder, Gaussian latent (recipes.md); the config's family chooses He et al.'s
    model or Fu et al.'s (fastvae.models.config). Implements fastvae.models.protocol in full."""

    def __init__(self, vocab_size: int, config: ModelConfig | str):
        super().__init__()
        config = get_config(config)
        if not isinstance(vocab_size, int) or vocab_size < 5:
            raise ValueError(f"TextVAE: vocab_size must be an int >= 5 (4 special tokens + words), got {vocab_size!r}")
        self.config = config
        self.vocab_size = vocab_size
        self.latent_dim = config.latent_dim
        fu = config.family == "fu2019"
        self.encoder = LSTMEncoder(vocab_size, config.emb_dim, config.enc_hidden, config.latent_dim,
                                   posterior_bias=fu)
        self.decoder = LSTMDecoder(vocab_size, config.emb_dim, config.dec_hidden, config.latent_dim,
                                   dropout_in=config.dropout_in, dropout_out=config.dropout_out,
                                   latent_state="hidden" if fu else "cell", output_bias=fu,
                                   init_range=FU2019_INIT_RANGE if fu else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.config.family == "fu2019":  # the script: every parameter U(-0.1, 0.1)
            for p in self.encoder.parameters():
                nn.init.uniform_(p, -FU2019_INIT_RANGE, FU2019_INIT_RANGE)
        else:
            _reference_init(self.encoder)
        self.decoder.reset_parameters()

    def reset_decoder_parameters(self) -> None:
        """Re-initialise every decoder parameter (embedding, LSTM, z-to-state, output): Li et al.'s phase 2."""
        self.decoder.reset_parameters()

    def encoder_parameters(self):
        return self.encoder.parameters()

    def decoder_parameters(self):
        return self.decoder.parameters()

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """(mu, logvar), each [B, nz]."""
        _check_batch("TextVAE.encode", tokens, lengths, self.vocab_size)
        return self.encoder(tokens, lengths)

    def reconstruction(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) summed over the predicted tokens (words and </s>): [B], or [B, K] for z [B, K, nz]."""
        _check_batch("TextVAE.reconstruction", tokens, lengths, self.vocab_size)
        return -self.decoder.token_log_likelihood(tokens[:, :-1], tokens[:, 1:], z, lengths=lengths - 1, pad_id=PAD)

    def reconstruction_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor, scale: float = 1.0):
        """(scale * the sum of -log p(x | z) over sentences, a differentiable scalar; per sentence, detached): the
        training loss through the fused output layer + cross-entropy (LSTMDecoder.reconstruction_loss)."""
        _check_batch("TextVAE.reconstruction_loss", tokens, lengths, self.vocab_size)
        return self.decoder.reconstruction_loss(tokens[:, :-1], tokens[:, 1:], z, lengths=lengths - 1, pad_id=PAD,
                                                scale=scale)

    def generate(self, z: torch.Tensor, bos_id: int, eos_id: int, max_len: int, *, strategy: str = "greedy",
                 temperature: float = 1.0, top_k: int = 0, beam_size: int = 5,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Decodes z [N, nz] (LSTMDecoder.generate): N lists of ids without <s> and </s>."""
        return self.decoder.generate(z, bos_id, eos_id, max_len, strategy=strategy, temperature=temperature,
                                     top_k=top_k, beam_size=beam_size, generator=generator)

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """bfloat16 GEMMs on cached weight copies (LSTMDecoder.set_compute_dtype, LSTMEncoder.set_compute_dtype);
        None: float32."""
        self.encoder.set_compute_dtype(dtype)
        self.decoder.set_compute_dtype(dtype)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, nsamples: int = 1, generator=None) -> dict:
        """One pass: posterior, reparameterised sample(s), reconstruction loss per sentence (and sample)."""
        from .. import functional as F

        mu, logvar = self.encode(tokens, lengths)
        z = F.reparameterize(mu, logvar, nsamples=nsamples, generator=generator)
        return {"mu": mu, "logvar": logvar, "z": z, "rec": self.reconstruction(tokens, lengths, z)}


class LSTMLM(nn.Module):
    """The LSTM language-model baseline: the decoder without a latent (exact likelihood)."""

    def __init__(self, vocab_size: int, config: ModelConfig | str):
        super().__init__()
        config = get_config(config)
        if not isinstance(vocab_size, int) or vocab_size < 5:
            raise ValueError(f"LSTMLM: vocab_size must be an int >= 5, got {vocab_size!r}")
        self.config = config
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, config.emb_dim)
        self.dropout_in = Dropout(config.dropout_in)
        self.lstm = nn.LSTM(config.emb_dim, config.dec_hidden, batch_first=True)
        self.dropout_out = Dropout(config.dropout_out)
        self.output = nn.Linear(config.dec_hidden, vocab_size, bias=False)
        self.weight_copies: WeightCopies | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reference_init(self)

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """bfloat16: the fused output layer reads a bfloat16 copy of its weight, cast once per optimiser step."""
        from ..nn.precision import WeightCopies

        self.weight_copies = None if dtype is None else WeightCopies(dtype)

    def nll(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-log p(x) summed over the predicted tokens: [B]."""
        _check_batch("LSTMLM.nll", tokens, lengths, self.vocab_size)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden, _ = self.lstm(self.dropout_in(self.embed(inputs)))
        logits = self.output(self.dropout_out(hidden))
        nll = nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), reduction="none")
        mask = (targets != PAD) & (torch.arange(targets.shape[1], device=tokens.device) < (lengths - 1).unsqueeze(1))
        return (nll.view_as(targets) * mask).sum(1)

    def nll_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, scale: float = 1.0):
        """(scale * sum of -log p(x) over sentences, differentiable; per sentence, detached), through the fused
        output layer + cross-entropy."""
        from ..ops.linear_cross_entropy import linear_cross_entropy

        _check_batch("LSTMLM.nll_loss", tokens, lengths, self.vocab_size)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden, _ = self.lstm(self.dropout_in(self.embed(inputs)))
        hidden = self.dropout_out(hidden).to(self.output.weight.dtype)  # float32 also under autocast
        B, T = targets.shape
        mask = (targets != PAD) & (torch.arange(T, device=tokens.device) < (lengths - 1).unsqueeze(1))
        acc = compute_dtype(hidden.dtype)
        copy = None if self.weight_copies is None else self.weight_copies.get(self.output.weight)
        loss, nll = linear_cross_entropy(hidden.reshape(B * T, -1), self.output.weight, targets.reshape(-1),
                                         mask.reshape(-1).to(acc) * float(scale), weight_compute=copy)
        return loss, (nll.view(B, T) * mask).sum(1)

    forward = nll


MODEL_KINDS = ("vae", "lm")


def build_model(kind: str, vocab_size: int, config: ModelConfig | str) -> nn.Module:
    if kind == "vae":
        return TextVAE(vocab_size, config)
    if kind == "lm":
        return LSTMLM(vocab_size, config)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
