"""What a model must provide for fastvae's Trainer, recipes, evaluation and generation.

fastvae's recipes and metrics never look inside a model: they call the members below. `TextVAE` (the LSTM VAE of
the papers) implements them; so does `fastvae.hf.HFTextVAE`; a user's own `nn.Module` that implements them trains
with every recipe. Tokens are fastvae's: a [B, T] LongTensor of ids whose rows start with `<s>` (id 1) and end with
`</s>` (id 2) at `lengths - 1`, padded with `<pad>` (id 0) after it (fastvae.data).

Required of a VAE (`check_vae_model` says which are missing):

- `latent_dim: int`, the size of z.
- `encode(tokens, lengths) -> (mu, logvar)`, each [B, nz]: the Gaussian posterior q(z|x).
- `reconstruction(tokens, lengths, z) -> Tensor`: -log p(x|z) summed over the predicted tokens (every token after
  `<s>`, `</s>` included), [B] for z [B, nz] and [B, K] for K samples z [B, K, nz] (IW-NLL asks for K up to 500:
  chunk over K inside if memory needs it).
- `encoder_parameters()` and `decoder_parameters()`: the parameters of q(z|x) and of p(x|z), disjoint and
  together every trained parameter. The recipes keep one optimiser for each; the aggressive recipe steps the
  encoder's alone.

Optional:

- `reconstruction_loss(tokens, lengths, z, scale=1.0) -> (loss, per_sentence)`: the training loss,
  scale x sum of -log p(x|z) (differentiable) and the per-sentence values (detached). Used instead of
  `reconstruction` when present (fastvae's models compute it through a fused output layer + cross-entropy).
- `reset_decoder_parameters()`: re-initialise every decoder parameter. pretrain-fb resets the decoder when its
  second phase starts (Li et al.) unless the recipe option `reset_decoder` is off; a model without the method
  needs `reset_decoder=False`.
- `decoder_is_pretrained: bool`: True makes `reset_decoder` default to off (a pretrained language-model decoder
  is kept), as `fastvae.hf` models do.
- `generate(z, bos_id, eos_id, max_len, *, strategy="greedy", temperature=1.0, top_k=0, beam_size=5,
  generator=None) -> list[list[int]]`: decoded ids per row of z [N, nz], without `<s>`/`</s>`. Reconstruction,
  sampling, interpolation and BLEU need it.
- `set_compute_dtype(dtype)`: the model keeps its own bfloat16 weight copies under `--precision bf16` (fastvae's
  models); without it the Trainer runs the model under torch.autocast.
- `vocab_size: int`: checked against the corpus's vocabulary when present.
- `config`: a `fastvae.models.ModelConfig` when the model is one of fastvae's configs (checkpoints then rebuild it
  by name); without it the checkpoint records the model's class and `batch_size` must be given to the Trainer.

A language model (the `lm` recipe) provides `nll(tokens, lengths) -> [B]` (and optionally `nll_loss(tokens,
lengths, scale)`), with `parameters()` for its one optimiser.
"""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch

# the members every VAE needs, and what each is for (the error message of check_vae_model)
REQUIRED_VAE_MEMBERS = {
    "latent_dim": "the size of z (an int attribute)",
    "encode": "encode(tokens, lengths) -> (mu, logvar), each [B, nz]",
    "reconstruction": "reconstruction(tokens, lengths, z) -> -log p(x|z), [B] or [B, K] for z [B, K, nz]",
    "encoder_parameters": "encoder_parameters() -> the parameters of q(z|x)",
    "decoder_parameters": "decoder_parameters() -> the parameters of p(x|z)",
}
REQUIRED_LM_MEMBERS = {"nll": "nll(tokens, lengths) -> -log p(x), [B]"}
GENERATE_SIGNATURE = ("generate(z, bos_id, eos_id, max_len, *, strategy, temperature, top_k, beam_size, generator) "
                      "-> list of id lists")


@runtime_checkable
class TextVAEModel(Protocol):
    """The members fastvae calls on a VAE (this module's docstring says what each must do)."""

    latent_dim: int

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reconstruction(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...

    def encoder_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def decoder_parameters(self) -> Iterable[torch.nn.Parameter]: ...


def _missing(model, members: dict) -> list:
    missing = []
    for name, what in members.items():
        value = getattr(model, name, None)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1 if name == "latent_dim" \
            else callable(value)
        if not ok:
            missing.append(f"{name}: {what}")
    return missing


def is_vae_model(model) -> bool:
    """True for a model that provides `encode` (the VAE protocol); a language model provides `nll`."""
    return callable(getattr(model, "encode", None))


def check_vae_model(model, *, who: str = "the model") -> None:
    """Raises ValueError naming every required member the model lacks (module docstring), and when its encoder
    and decoder parameters overlap or miss some of its trainable parameters."""
    missing = _missing(model, REQUIRED_VAE_MEMBERS)
    if missing:
        raise ValueError(f"{who} ({type(model).__name__}) does not implement fastvae's VAE protocol "
                         f"(fastvae.models.protocol); missing: " + "; ".join(missing))
    encoder = list(model.encoder_parameters())
    decoder = list(model.decoder_parameters())
    encoder_ids, decoder_ids = {id(p) for p in encoder}, {id(p) for p in decoder}
    shared = encoder_ids & decoder_ids
    if shared:
        raise ValueError(f"{who} ({type(model).__name__}): {len(shared)} parameter(s) are both in "
                         f"encoder_parameters() and decoder_parameters(); each parameter belongs to one optimiser")
    if isinstance(model, torch.nn.Module):
        covered = encoder_ids | decoder_ids
        left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if left:
            raise ValueError(f"{who} ({type(model).__name__}): trainable parameters in neither "
                             f"encoder_parameters() nor decoder_parameters(), so no optimiser would train them: "
                             f"{', '.join(left[:8])}" + (" ..." if len(left) > 8 else ""))


def check_lm_model(model, *, who: str = "the model") -> None:
    missing = _missing(model, REQUIRED_LM_MEMBERS)
    if missing:
        raise ValueError(f"{who} ({type(model).__name__}) is not a language model for the lm recipe; missing: "
                         + "; ".join(missing))


def check_can_generate(model, *, who: str = "the model") -> None:
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"{who} ({type(model).__name__}) cannot decode: it has no {GENERATE_SIGNATURE} "
                         f"(fastvae.models.protocol)")


def resolve_reset_decoder(model, option: bool | None) -> bool:
    """pretrain-fb's decoder reset for this model: the option when given, else off for a model that declares a
    pretrained decoder (`decoder_is_pretrained`) and on otherwise (Li et al.). On needs reset_decoder_parameters."""
    reset = (not bool(getattr(model, "decoder_is_pretrained", False))) if option is None else bool(option)
    if reset and not callable(getattr(model, "reset_decoder_parameters", None)):
        how = ("the recipe option reset_decoder is on" if option is not None
               else "pretrain-fb re-initialises the decoder by default (Li et al.)")
        raise ValueError(f"{type(model).__name__} has no reset_decoder_parameters(), but {how}: implement it, or "
                         f"keep the decoder with reset_decoder=False (--reset-decoder false)")
    return reset


def model_class_name(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def model_source(model) -> dict | None:
    """How a checkpoint rebuilds this model without the arguments it was made with: the optional member
    `model_source() -> {"builder": "fastvae.MODULE:CALLABLE", "arguments": {JSON values}}` (fastvae.hf's models
    give one), checked here so that a checkpoint never records what `rebuild_from_source` would refuse."""
    get = getattr(model, "model_source", None)
    if not callable(get):
        return None
    source = get()
    _check_source(source, f"{type(model).__name__}.model_source()")
    return source


def _check_source(source, where: str) -> None:
    if not isinstance(source, dict) or set(source) != {"builder", "arguments"} \
            or not isinstance(source["builder"], str) or not isinstance(source["arguments"], dict):
        raise ValueError(f"{where} must be {{'builder': 'fastvae.MODULE:CALLABLE', 'arguments': {{...}}}}, "
                         f"got {source!r}")
    module, _, name = source["builder"].partition(":")
    # a checkpoint names code to run: only fastvae's own builders, never an arbitrary import path
    if not module.startswith("fastvae.") or not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"{where}: the builder must be a callable of a fastvae module ('fastvae.MODULE:CALLABLE'), "
                         f"got {source['builder']!r}")


def rebuild_from_source(source, *, where: str = "the checkpoint") -> torch.nn.Module:
    """The model a checkpoint's `model_source` describes (its weights are loaded by the caller)."""
    import importlib

    _check_source(source, f"{where}'s model_source")
    module_name, _, name = source["builder"].partition(":")
    target: object = importlib.import_module(module_name)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where}'s model_source names {source['builder']!r}, which is not callable")
    model = target(**source["arguments"])
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{where}'s model_source builder {source['builder']!r} returned a {type(model).__name__}, "
                         f"not a model")
    return model
