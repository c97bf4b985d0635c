"""Step-by-step decoding from an LSTMDecoder: greedy, sampling (temperature, top-k) and batched beam search.

Every strategy runs the fused step op (fastvae.ops.lstm_step): per step one embedding lookup, one input
projection of the new tokens (the latent part of the input projection is computed once), one step.
The search loops (`greedy_or_sample_search`, `beam_search`) take any stepper: an object whose `step(tokens [N])`
gives the next token's logits [N, V] and whose `reorder(index)` keeps the rows `index` (fastvae.hf.decoding's too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.lstm_sequence import lstm_step

STRATEGIES = ("greedy", "sample", "beam")


class _Stepper:
    """Holds the recurrent state of N rows and advances it one token at a time."""

    def __init__(self, decoder, z):
        self.decoder = decoder
        dtype = decoder.weight_hh_l0.dtype
        z = z.to(dtype)
        self.word_weight = decoder.weight_ih_l0[:, : decoder.emb_dim]
        self.sample_gates = F.linear(z, decoder.weight_ih_l0[:, decoder.emb_dim:],
                                     decoder.bias_ih_l0 + decoder.bias_hh_l0)  # [N, 4H], once per sequence
        self.h, self.c = decoder.initial_state(z)

    def step(self, tokens):
        """tokens [N] -> logits of the next token [N, V] (float32 or wider)."""
        embedded = self.decoder.embed(tokens)
        gates = torch.addmm(self.sample_gates, embedded, self.word_weight.t())
        self.h, self.c = lstm_step(gates, self.h, self.c, self.decoder.weight_hh_l0)
        logits = self.decoder.output(self.h)
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def reorder(self, index):
        self.h = self.h.index_select(0, index)
        self.c = self.c.index_select(0, index)
        self.sample_gates = self.sample_gates.index_select(0, index)


def _check(decoder, z, bos_id, eos_id, max_len, strategy, temperature, top_k, beam_size):
    if strategy not in STRATEGIES:
        raise ValueError(f"generate: unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != decoder.latent_dim:
        raise ValueError(f"generate: z must be [batch, latent_dim={decoder.latent_dim}], got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z.device != decoder.weight_hh_l0.device:
        raise ValueError(f"generate: z is on {z.device}, the decoder on {decoder.weight_hh_l0.device}")
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not isinstance(value, int) or not 0 <= value < decoder.vocab_size:
            raise ValueError(f"generate: {name} must be a token id in [0, {decoder.vocab_size}), got {value!r}")
    if not isinstance(max_len, int) or max_len < 0:
        raise ValueError(f"generate: max_len must be an int >= 0, got {max_len!r}")
    if not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"generate: top_k must be an int >= 0 (0 = no top-k filter), got {top_k!r}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"generate: beam_size must be an int >= 1, got {beam_size!r}")


def _trim(rows, eos_id):
    out = []
    for row in rows:
        row = row.tolist()
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


def greedy_or_sample_search(stepper, tokens, eos_id: int, max_len: int, sample: bool, temperature, top_k,
                            generator):
    """Token ids [N, L] (L <= max_len) from the first tokens [N]: the most likely next token, or one drawn from
    softmax(logits / temperature) over the `top_k` most likely (0: all); a row repeats `eos_id` once it ended."""
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    out = []
    for _ in range(max_len):
        logits = stepper.step(tokens)
        if sample:
            logits = logits / temperature
            if 0 < top_k < logits.shape[1]:
                kth = logits.topk(top_k, dim=1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            tokens = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
        else:
            tokens = logits.argmax(dim=1)
        tokens = tokens.masked_fill(finished, eos_id)
        out.append(tokens)
        finished |= tokens == eos_id
        if bool(finished.all()):
            break
    if not out:
        return tokens.new_empty(tokens.shape[0], 0)
    return torch.stack(out, 1)


def beam_search(stepper, tokens, eos_id: int, max_len: int, beam: int):
    """Batched beam search over B sentences x `beam` hypotheses (the stepper's rows, sentence-major, first tokens
    `tokens` [B * beam]): the best hypothesis's ids [B, L]. A finished hypothesis keeps its score (it may only
    continue with </s> at no cost) and the search stops when every hypothesis has finished. Scores are summed
    log-probabilities (no length normalisation); `beam` must not exceed the tokens a step can produce."""
    device = tokens.device
    B = tokens.shape[0] // beam
    scores = torch.full((B, beam), float("-inf"), device=device, dtype=torch.float64)
    scores[:, 0] = 0.0  # all hypotheses start equal: keep one so the first step does not pick duplicates
    finished = torch.zeros(B * beam, dtype=torch.bool, device=device)
    history = torch.empty(B * beam, 0, dtype=torch.long, device=device)
    offsets = (torch.arange(B, device=device) * beam).unsqueeze(1)
    for _ in range(max_len):
        log_probs = F.log_softmax(stepper.step(tokens), dim=1).double()
        V = log_probs.shape[1]
        # Finished hypotheses may only emit </s>, at no cost.
        log_probs[finished] = float("-inf")
        log_probs[finished, eos_id] = 0.0
        total = (scores.view(B * beam, 1) + log_probs).view(B, beam * V)
        scores, flat = total.topk(beam, dim=1)
        parent = (flat // V + offsets).view(-1)
        tokens = (flat % V).view(-1)
        stepper.reorder(parent)
        history = torch.cat([history.index_select(0, parent), tokens.unsqueeze(1)], dim=1)
        finished = finished.index_select(0, parent) | (tokens == eos_id)
        if bool(finished.all()):
            break
    return history.view(B, beam, -1)[:, 0]  # topk sorts: hypothesis 0 has the best score


@torch.no_grad()
def generate(decoder, z, bos_id, eos_id, max_len, *, strategy="greedy", temperature=1.0, top_k=0, beam_size=5,
             generator=None):
    """B lists of generated token ids (without <s>, stopping before </s>, at most max_len tokens)."""
    _check(decoder, z, bos_id, eos_id, max_len, strategy, temperature, top_k, beam_size)
    was_training = decoder.training
    decoder.eval()
    try:
        beam = min(beam_size, decoder.vocab_size) if strategy == "beam" else 1
        z = z.repeat_interleave(beam, dim=0) if beam > 1 else z
        first = torch.full((z.shape[0],), bos_id, dtype=torch.long, device=z.device)
        if strategy == "beam":
            ids = beam_search(_Stepper(decoder, z), first, eos_id, max_len, beam)
        else:
            ids = greedy_or_sample_search(_Stepper(decoder, z), first, eos_id, max_len, strategy == "sample",
                                          temperature, top_k, generator)
        return _trim(ids.cpu(), eos_id)
    finally:
        decoder.train(was_training)
