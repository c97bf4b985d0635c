"""The LSTM decoder of a text VAE (recipes.md), on fastvae's fused recurrence.

z is used twice, as in the reference model: the initial cell state c0 = Linear(nz, H, bias=False)(z),
h0 = tanh(c0), and z concatenated to the word embedding at every step (LSTM input = emb + nz).
`latent_state="hidden"` is Fu et al.'s PTB model instead (Kim et al.'s SA-VAE code): h0 = Linear(nz, H)(z) with
a bias, c0 = 0, no tanh; with `output_bias=True` and `init_range=0.1` it is that script's decoder. The LSTM
parameters carry torch.nn.LSTM's names, shapes and gate order (weight_ih_l0 [4H, emb+nz], weight_hh_l0
[4H, H], bias_ih_l0, bias_hh_l0), so weights move between the two unchanged.

The concatenation is never materialised: weight_ih_l0 splits into a word part, applied to all
positions in one GEMM (shared by the K samples of a sentence in the IW shape [B, K, nz]), and a latent
part, applied once per sequence; the recurrence adds both at every step (fastvae.ops.lstm_sequence).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dtypes import compute_dtype
from ..ops.linear_cross_entropy import linear_cross_entropy
from ..ops.lstm_sequence import lstm_sequence
from . import precision
from .dropout import Dropout

# token_log_likelihood evaluates at most this many logits at once (K is chunked to fit).
DEFAULT_MAX_LOGITS = 2**25


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_values(tensor: torch.Tensor) -> bool:
    """Whether to read token ids and lengths back to check their range. CPU tensors: always (a memory read).
    GPU tensors: only with FASTVAE_CHECK_VALUES=1, since each check is a host sync, per call, and the aggressive
    policy's inner loop multiplies the calls (fastvae's data layer builds ids from its vocabulary, on the host).
    Never while torch.compile traces (values are not known then)."""
    if _compiling():
        return False
    return tensor.device.type == "cpu" or os.environ.get("FASTVAE_CHECK_VALUES", "0") == "1"


def _check_ids(what, ids, vocab_size):
    if ids.numel():
        low, high = (int(v) for v in torch.aminmax(ids))  # one host sync for both bounds
        if low < 0 or high >= vocab_size:
            raise ValueError(f"LSTMDecoder: {what} must be in [0, {vocab_size}), got values in [{low}, {high}]")


LATENT_STATES = ("cell", "hidden")


class LSTMDecoder(nn.Module):
    """LSTMDecoder(vocab_size, emb_dim, hidden_dim, latent_dim, dropout_in=0.5, dropout_out=0.5,
    latent_state="cell", output_bias=False, init_range=None).

    latent_state "cell": c0 = Linear(z) (no bias), h0 = tanh(c0) (He et al.); "hidden": h0 = Linear(z) + b, c0 = 0
    (Fu et al.). init_range None: the reference init (reset_parameters); r: every parameter U(-r, r)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int,
                 dropout_in: float = 0.5, dropout_out: float = 0.5, *, latent_state: str = "cell",
                 output_bias: bool = False, init_range: float | None = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim), ("hidden_dim", hidden_dim),
                            ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LSTMDecoder: {name} must be a positive int, got {value!r}")
        for name, rate in (("dropout_in", dropout_in), ("dropout_out", dropout_out)):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"LSTMDecoder: {name} must be in [0, 1), got {rate!r}")
        if latent_state not in LATENT_STATES:
            raise ValueError(f"LSTMDecoder: latent_state must be one of {', '.join(LATENT_STATES)}, "
                             f"got {latent_state!r}")
        if init_range is not None and not (isinstance(init_range, (int, float)) and 0 < init_range < float("inf")):
            raise ValueError(f"LSTMDecoder: init_range must be None or a positive number, got {init_range!r}")
        self.latent_state = latent_state
        self.init_range = init_range
        self.vocab_size = vocab_size
        self.emb_dim = emb_dim
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(vocab_size, emb_dim)
        self.dropout_in = Dropout(dropout_in)
        self.dropout_out = Dropout(dropout_out)
        gates = 4 * hidden_dim
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, emb_dim + latent_dim))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, hidden_dim))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
        if latent_state == "cell":
            self.latent_to_cell = nn.Linear(latent_dim, hidden_dim, bias=False)
        else:
            self.latent_to_hidden = nn.Linear(latent_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, vocab_size, bias=bool(output_bias))
        self.weight_copies: precision.WeightCopies | None = None  # set_compute_dtype(torch.bfloat16)
        self.reset_parameters()

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """None: float32 (the parameters' dtype). torch.bfloat16: the GEMMs of the input projection and of the
        fused output layer read bfloat16 copies of the weights, cast once per optimiser step (the parameters,
        the recurrence's state, the loss and the gradients stay float32)."""
        self.weight_copies = None if dtype is None else precision.WeightCopies(dtype)

    def reset_parameters(self) -> None:
        """Reference init: every parameter U(-0.01, 0.01), the embedding U(-0.1, 0.1); with init_range r, every
        parameter U(-r, r)."""
        if self.init_range is not None:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -self.init_range, self.init_range)
            return
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.01, 0.01)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def initial_state(self, z: torch.Tensor):
        """(h0, c0) of the recurrence for z [..., nz]: (tanh(W z), W z), or Fu et al.'s (W z + b, 0)."""
        if self.latent_state == "cell":
            c0 = self.latent_to_cell(z)
            return torch.tanh(c0), c0
        h0 = self.latent_to_hidden(z)
        return h0, torch.zeros_like(h0)

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, emb_dim={self.emb_dim}, hidden_dim={self.hidden_dim}, "
                f"latent_dim={self.latent_dim}, latent_state={self.latent_state}")

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, inputs, z, lengths):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.dtype != torch.long:
            raise ValueError("LSTMDecoder: inputs must be a LongTensor [batch, time] of token ids, got "
                             + (f"{inputs.dtype} of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor)
                                else type(inputs).__name__))
        B, T = inputs.shape
        if T == 0:
            raise ValueError("LSTMDecoder: inputs have 0 time steps; they must start with <s>")
        values = check_values(inputs)
        if values:
            _check_ids("token ids", inputs, self.vocab_size)
        if not isinstance(z, torch.Tensor) or z.dim() not in (2, 3) or z.shape[0] != B \
                or z.shape[-1] != self.latent_dim:
            raise ValueError(f"LSTMDecoder: z must be [batch={B}, latent_dim={self.latent_dim}] or "
                             f"[batch={B}, samples, latent_dim={self.latent_dim}], got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"LSTMDecoder: z must be floating point, got {z.dtype}")
        if z.device != self.weight_hh_l0.device or inputs.device != self.weight_hh_l0.device:
            raise ValueError(f"LSTMDecoder: inputs ({inputs.device}) and z ({z.device}) must be on the decoder's "
                             f"device ({self.weight_hh_l0.device})")
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != B \
                    or lengths.dtype != torch.long:
                raise ValueError(f"LSTMDecoder: lengths must be a LongTensor [batch={B}], got "
                                 + (f"{lengths.dtype} of shape {tuple(lengths.shape)}"
                                    if isinstance(lengths, torch.Tensor) else type(lengths).__name__))
            # T + 1 accepts Batch.lengths (tokens incl. </s>) for decoder inputs tokens[:, :-1].
            if values and B:
                low, high = (int(v) for v in torch.aminmax(lengths))
                if low < 1 or high > T + 1:
                    raise ValueError(f"LSTMDecoder: lengths must be in [1, {T + 1}] for inputs of {T} steps, got "
                                     f"values in [{low}, {high}]")

    # ------------------------------------------------------------------ the recurrence
    def _input_gates(self, inputs):
        """Word part of the input projection for every position, biases folded in: [B, T, 4H]."""
        embedded = self.dropout_in(self.embed(inputs))
        word_weight = self.weight_ih_l0[:, : self.emb_dim]
        bias = self.bias_ih_l0 + self.bias_hh_l0
        if self.weight_copies is None:
            return F.linear(embedded, word_weight, bias)
        # the copy is cached for the whole parameter (a slice is a new tensor at every call)
        word_copy = self.weight_copies.get(self.weight_ih_l0)[:, : self.emb_dim]
        return precision._LowPrecisionLinear.apply(embedded, word_weight, bias, word_copy)

    def _hidden_states(self, input_gates, z3):
        """z3 [B, K, nz] -> LSTM outputs [B, K, T, H]."""
        z3 = z3.to(input_gates.dtype)
        sample_gates = F.linear(z3, self.weight_ih_l0[:, self.emb_dim:])
        h0, c0 = self.initial_state(z3)
        weight_low = None if self.weight_copies is None else self.weight_copies.get(self.weight_hh_l0)
        h_all, _ = lstm_sequence(input_gates, sample_gates, h0, c0, self.weight_hh_l0, weight_low)
        return h_all

    def forward(self, inputs: torch.Tensor, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """inputs [B, T] (starting with <s>), z [B, nz] or [B, K, nz] -> logits [B, T, V] or [B, K, T, V].

        logits[..., t, :] predict the token after inputs[:, t]. Positions t >= lengths[b] are padding: their
        logits are finite but meaningless (the recurrence runs forward in time, so padding after a
        sentence never changes its own positions); losses must mask them."""
        self._check_inputs(inputs, z, lengths)
        squeeze = z.dim() == 2
        z3 = z.unsqueeze(1) if squeeze else z
        h_all = self._hidden_states(self._input_gates(inputs), z3)
        logits = self.output(self.dropout_out(h_all))
        return logits.squeeze(1) if squeeze else logits

    def _target_mask(self, inputs, targets, lengths, pad_id):
        mask = torch.ones_like(targets, dtype=torch.bool)
        if pad_id is not None:
            mask &= targets != pad_id
        if lengths is not None:
            mask &= torch.arange(inputs.shape[1], device=inputs.device) < lengths.unsqueeze(1)
        return mask

    def _check_targets(self, inputs, targets):
        if not isinstance(targets, torch.Tensor) or targets.shape != inputs.shape or targets.dtype != torch.long:
            raise ValueError(f"LSTMDecoder: targets must be a LongTensor shaped like inputs {tuple(inputs.shape)}, got "
                             + (f"{targets.dtype} of shape {tuple(targets.shape)}"
                                if isinstance(targets, torch.Tensor) else type(targets).__name__))
        if check_values(targets):
            _check_ids("target ids", targets, self.vocab_size)

    def _fused_nll(self, hidden, targets, mask, scale: float):
        """hidden [B, K, T, H] -> (scale * masked NLL sum (differentiable), per-sentence NLL [B, K] detached)."""
        B, K, T, H = hidden.shape
        rows = hidden.reshape(B * K * T, H)
        target_rows = targets.unsqueeze(1).expand(B, K, T).reshape(-1)
        mask_rows = mask.unsqueeze(1).expand(B, K, T)
        acc = compute_dtype(rows.dtype)
        row_scale = mask_rows.reshape(-1).to(acc) * scale
        weight = self.output.weight
        copy = None if self.weight_copies is None else self.weight_copies.get(weight)
        if rows.dtype != weight.dtype:  # low-precision states (autocast): GEMMs in their dtype, as autocast would
            copy = weight.to(rows.dtype) if copy is None else copy
            rows = rows.to(weight.dtype)
        bias = self.output.bias
        if bias is not None:
            # the fused op has no bias: a column of ones on the rows and the bias as the weight's last column give
            # h W^T + b exactly, and the gradient reaches W and b through the concatenation
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            weight = torch.cat([weight, bias.unsqueeze(1)], dim=1)
            copy = None if copy is None else torch.cat([copy, bias.detach().unsqueeze(1).to(copy.dtype)], dim=1)
        loss, nll = linear_cross_entropy(rows, weight, target_rows, row_scale, weight_compute=copy)
        return loss, (nll.view(B, K, T) * mask_rows).sum(-1)

    def reconstruction_loss(self, inputs: torch.Tensor, targets: torch.Tensor, z: torch.Tensor,
                            lengths: torch.Tensor | None = None, pad_id: int | None = 0, scale: float = 1.0):
        """The training loss: (scale * sum over sentences (and samples) of -log p(targets | z), a differentiable
        scalar; -log p(targets | z) per sentence, [B] or [B, K], detached).

        The output layer and the cross-entropy are one fused op (fastvae.ops.linear_cross_entropy): its
        gradients are computed in the forward pass for this scaled sum, and the [rows, V] logits never exist at
        once. Same masking as token_log_likelihood."""
        self._check_inputs(inputs, z, lengths)
        self._check_targets(inputs, targets)
        squeeze = z.dim() == 2
        z3 = z.unsqueeze(1) if squeeze else z
        mask = self._target_mask(inputs, targets, lengths, pad_id)
        hidden = self.dropout_out(self._hidden_states(self._input_gates(inputs), z3))
        loss, per_sentence = self._fused_nll(hidden, targets, mask, float(scale))
        return loss, (per_sentence.squeeze(1) if squeeze else per_sentence)

    def token_log_likelihood(self, inputs: torch.Tensor, targets: torch.Tensor, z: torch.Tensor,
                             lengths: torch.Tensor | None = None, pad_id: int | None = 0,
                             max_logits: int = DEFAULT_MAX_LOGITS) -> torch.Tensor:
        """log p(targets | z) summed over the real target tokens: [B] for z [B, nz], [B, K] for z [B, K, nz].

        A target counts when it is not `pad_id` (None: no pad masking) and, with lengths, when t < lengths[b].
        The word projection runs once and is shared by all samples; K is processed in chunks so that at most
        about `max_logits` logits exist at a time (IW evaluation with K=500 never builds [B, K, T, V])."""
        self._check_inputs(inputs, z, lengths)
        self._check_targets(inputs, targets)
        if max_logits < 1:
            raise ValueError(f"LSTMDecoder: max_logits must be positive, got {max_logits}")
        B, T = inputs.shape
        squeeze = z.dim() == 2
        z3 = z.unsqueeze(1) if squeeze else z
        K = z3.shape[1]
        mask = self._target_mask(inputs, targets, lengths, pad_id)
        input_gates = self._input_gates(inputs)
        needs_grad = torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in self.parameters()))
        if not needs_grad:
            # evaluation (IW-NLL): the fused op, forward only; the logits exist one op chunk at a time, so K is
            # chunked by the hidden states' size instead
            chunk = max(1, min(K, max_logits // max(1, B * T * self.hidden_dim)))
            pieces = [-self._fused_nll(self.dropout_out(self._hidden_states(input_gates, z3[:, s:s + chunk])),
                                       targets, mask, 1.0)[1] for s in range(0, K, chunk)]
            out = torch.cat(pieces, dim=1)
            return out.squeeze(1) if squeeze else out
        per_sample = max(1, B * T * self.vocab_size)
        chunk = max(1, min(K, max_logits // per_sample))
        pieces = []
        for start in range(0, K, chunk):
            zc = z3[:, start:start + chunk]
            kc = zc.shape[1]
            logits = self.output(self.dropout_out(self._hidden_states(input_gates, zc)))  # [B, kc, T, V]
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()  # log-softmax over a large vocabulary in float32
            nll = F.cross_entropy(logits.reshape(-1, self.vocab_size),
                                  targets.unsqueeze(1).expand(B, kc, T).reshape(-1), reduction="none")
            pieces.append(-(nll.view(B, kc, T) * mask.unsqueeze(1)).sum(-1))
        out = torch.cat(pieces, dim=1)
        return out.squeeze(1) if squeeze else out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, z: torch.Tensor, bos_id: int, eos_id: int, max_len: int, strategy: str = "greedy",
                 temperature: float = 1.0, top_k: int = 0, beam_size: int = 5,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Decodes z [B, nz] step by step: B lists of token ids (without <s>, stopping before </s>, at most
        max_len tokens). strategy: "greedy", "sample" (temperature, top_k; 0 = whole vocabulary) or "beam"."""
        from .generation import generate

        return generate(self, z, bos_id, eos_id, max_len, strategy=strategy, temperature=temperature, top_k=top_k,
                        beam_size=beam_size, generator=generator)
