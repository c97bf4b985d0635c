"""Decoding from an HFTextVAE: greedy, sampling and beam search, one token at a time over the decoder's key/value
cache (which starts as z's memory position when z is injected as memory)."""
from __future__ import annotations

import torch

from ..nn.generation import STRATEGIES, beam_search, greedy_or_sample_search
from .loading import empty_cache, key_value_cache


class _Stepper:
    """Feeds one decoder token per row and returns the next token's logits, keeping the cache (the stepper of
    fastvae.nn.generation's search loops)."""

    def __init__(self, vae, z: torch.Tensor):
        self.vae = vae
        config = vae.decoder.config
        memory = vae.injection.memory(z, vae._decoder_dtype())
        self.cache = key_value_cache(memory, config) if memory is not None else empty_cache(config)
        self.offset = vae.injection.embedding_offset(z)
        self.embed = vae.decoder.get_input_embeddings()
        self.allowed = vae.decoder_to_fastvae >= 0  # decoder tokens without a fastvae id are never produced

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids.unsqueeze(1))
        if self.offset is not None:
            x = x + self.offset.to(x.dtype)
        out = self.vae.decoder(inputs_embeds=x, use_cache=True, **{self.vae.cache_argument: self.cache})
        return out.logits[:, -1].float().masked_fill(~self.allowed, float("-inf"))

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)
        if self.offset is not None:
            self.offset = self.offset.index_select(0, index)


def _check(strategy, max_len, temperature, top_k, beam_size) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: no limit), got {top_k!r}")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")


def _to_fastvae(vae, history: torch.Tensor, eos_id: int) -> list:
    """Decoder ids [N, L] -> fastvae id lists, cut before the first </s>."""
    rows = []
    for row in vae.decoder_to_fastvae[history].clamp(min=0).tolist():
        rows.append(row[: row.index(eos_id)] if eos_id in row else row)
    return rows


@torch.no_grad()
def generate(vae, z, bos_id, eos_id, max_len, *, strategy="greedy", temperature=1.0, top_k=0, beam_size=5,
             generator=None) -> list:
    """fastvae ids per row of z [N, nz] (without <s>/</s>); the protocol's `generate`."""
    _check(strategy, max_len, temperature, top_k, beam_size)
    if z.dim() != 2 or z.shape[1] != vae.latent_dim:
        raise ValueError(f"generate: z must be [N, {vae.latent_dim}], got {tuple(z.shape)}")
    limit = getattr(vae.decoder.config, "max_position_embeddings", None)
    if isinstance(limit, int):  # no more tokens than the decoder has positions (z's memory takes one)
        max_len = min(max_len, limit - ("memory" in vae.inject))
    device = vae.fastvae_to_decoder.device
    z = z.to(device=device, dtype=vae.to_posterior.weight.dtype)
    bos, eos = vae.fastvae_to_decoder[bos_id], int(vae.fastvae_to_decoder[eos_id])
    # no more beams than the decoder tokens that have a fastvae id (the others are never produced)
    beam = min(beam_size, int((vae.decoder_to_fastvae >= 0).sum())) if strategy == "beam" else 1
    z = z.repeat_interleave(beam, dim=0) if beam > 1 else z
    first = bos.expand(z.shape[0]).clone()
    if strategy == "beam":
        history = beam_search(_Stepper(vae, z), first, eos, max_len, beam)
    else:
        history = greedy_or_sample_search(_Stepper(vae, z), first, eos, max_len, strategy == "sample", temperature,
                                          top_k, generator)
    return _to_fastvae(vae, history, eos_id)
