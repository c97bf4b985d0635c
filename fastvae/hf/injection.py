"""How z reaches a pretrained decoder without changing its architecture (Optimus, Li et al. 2020):

- "memory": z -> one extra key/value position in every attention layer, handed to the model as its cache of past
  keys and values, so every token attends to z in every layer;
- "embedding": z -> a vector added to every input embedding.
"""
from __future__ import annotations

import torch
from torch import nn

INJECT_MODES = ("memory", "embedding")


def parse_inject(inject) -> tuple:
    """("memory", "embedding") from "memory", "embedding", "both" or a collection of modes."""
    if isinstance(inject, str):
        modes = INJECT_MODES if inject == "both" else (inject,)
    else:
        try:
            modes = tuple(inject)
        except TypeError:
            modes = (inject,)
    unknown = [m for m in modes if m not in INJECT_MODES]
    if not modes or unknown:
        raise ValueError(f"inject: unknown mode(s) {unknown or modes!r}; expected 'memory', 'embedding', 'both' or "
                         f"a non-empty subset of {INJECT_MODES}")
    return tuple(m for m in INJECT_MODES if m in modes)


def attention_shape(config) -> tuple:
    """(layers, key/value heads, head size) of a decoder's self-attention, from its config."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return int(layers), int(kv_heads), int(head_dim)


class LatentInjection(nn.Module):
    """The decoder-side layers that carry z into the language model (module docstring)."""

    def __init__(self, latent_dim: int, inject: tuple, embedding_size: int, attention: tuple):
        super().__init__()
        self.inject = inject
        self.layers, self.kv_heads, self.head_dim = attention
        self.to_memory = (nn.Linear(latent_dim, self.layers * 2 * self.kv_heads * self.head_dim)
                          if "memory" in inject else None)
        self.to_embedding = nn.Linear(latent_dim, embedding_size) if "embedding" in inject else None

    def reset_parameters(self) -> None:
        for layer in (self.to_memory, self.to_embedding):
            if layer is not None:
                layer.reset_parameters()

    def embedding_offset(self, z: torch.Tensor) -> torch.Tensor | None:
        """[N, 1, hidden] to add to the input embeddings, or None."""
        return None if self.to_embedding is None else self.to_embedding(z).unsqueeze(1)

    def memory(self, z: torch.Tensor, dtype: torch.dtype | None = None) -> list | None:
        """Per layer, (key, value) of one position, each [N, kv_heads, 1, head_dim] (in `dtype` when given); or
        None."""
        if self.to_memory is None:
            return None
        n = z.shape[0]
        states = self.to_memory(z)
        states = states if dtype is None else states.to(dtype)
        states = states.view(n, self.layers, 2, self.kv_heads, 1, self.head_dim)
        return [(states[:, layer, 0], states[:, layer, 1]) for layer in range(self.layers)]
