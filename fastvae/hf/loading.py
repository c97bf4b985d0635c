"""Getting Hugging Face models and tokenizers from a name, a local path, a config or an instance, and describing
them as JSON so a checkpoint rebuilds them without the original files."""
from __future__ import annotations

import inspect
import json

import torch


def config_dict(model) -> dict:
    """The model's full config as JSON values (stored in the checkpoint's model source)."""
    return json.loads(model.config.to_json_string(use_diff=False))


def config_from_dict(values: dict):
    from transformers import AutoConfig

    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ValueError("a stored Hugging Face config has no model_type: the checkpoint's model source was edited")
    return AutoConfig.for_model(model_type, **values)


def source_name(model) -> str | None:
    """The name or path a model was loaded from, when transformers recorded one."""
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    return str(name) if name else None


def load_encoder(source):
    """(model, loaded_from_pretrained_weights) for an encoder given as a name, a path, a config or a model."""
    from transformers import AutoModel, PretrainedConfig, PreTrainedModel

    if isinstance(source, PreTrainedModel):
        model, pretrained = source, True
    elif isinstance(source, PretrainedConfig):
        model, pretrained = AutoModel.from_config(source), False
    elif isinstance(source, str):
        model, pretrained = AutoModel.from_pretrained(source), True
    else:
        raise ValueError(f"encoder: expected a model name, a local path, a transformers config or a PreTrainedModel, "
                         f"got {type(source).__name__}")
    if _first_position_sees_second_token(model, lambda out: out.last_hidden_state) is False:
        raise ValueError(f"encoder {type(model).__name__} is causal: its first position, which q(z|x) reads, sees "
                         f"nothing of the sentence; give a bidirectional encoder (BERT, RoBERTa, ...)")
    return model, pretrained


def load_decoder(source):
    """(model, loaded_from_pretrained_weights) for a causal language model given as a name, path, config or model."""
    from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

    if isinstance(source, PreTrainedModel):
        model, pretrained = source, True
    elif isinstance(source, PretrainedConfig):
        model, pretrained = _causal_lm_or_error(lambda: AutoModelForCausalLM.from_config(source), source), False
    elif isinstance(source, str):
        model, pretrained = _causal_lm_or_error(lambda: AutoModelForCausalLM.from_pretrained(source), source), True
    else:
        raise ValueError(f"decoder: expected a model name, a local path, a transformers config or a PreTrainedModel "
                         f"(a causal language model), got {type(source).__name__}")
    check_causal_lm(model)
    return model, pretrained


def _causal_lm_or_error(load, source):
    try:
        return load()
    except ValueError as exc:  # transformers: "Unrecognized configuration class ... for AutoModelForCausalLM"
        raise ValueError(f"decoder {getattr(source, 'model_type', source)!r} is not a causal language model "
                         f"(AutoModelForCausalLM cannot load it): {' '.join(str(exc).split())[:200]}") from exc


@torch.no_grad()
def check_causal_lm(model) -> None:
    """Refuses a decoder that is not a left-to-right language model: one without an output layer, or one whose
    first position sees the second token (a bidirectional encoder under an LM head, e.g. BERT without
    is_decoder), which would let the VAE read the sentence it is asked to predict."""
    if not callable(getattr(model, "get_output_embeddings", None)) or model.get_output_embeddings() is None:
        raise ValueError(f"decoder {type(model).__name__} has no language-model head: give a causal language model "
                         f"(AutoModelForCausalLM), e.g. gpt2")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"decoder {type(model).__name__} is an encoder-decoder model; give a decoder-only causal "
                         f"language model (AutoModelForCausalLM), e.g. gpt2")
    if _first_position_sees_second_token(model, lambda out: out.logits):
        raise ValueError(f"decoder {type(model).__name__} is not causal: its prediction at the first position changes "
                         f"with the second token (a bidirectional model under an LM head, e.g. BERT without "
                         f"is_decoder=True); give a causal language model, e.g. gpt2")


@torch.no_grad()
def _first_position_sees_second_token(model, output) -> bool | None:
    """Whether `output(model(ids))` at position 0 changes with the token at position 1 (None: the model cannot
    run on three-id inputs or has no such output; then nothing is concluded)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        a = output(model(input_ids=torch.tensor([[0, 1]], device=device)))[0, 0]
        b = output(model(input_ids=torch.tensor([[0, 2]], device=device)))[0, 0]
    except (AttributeError, TypeError, IndexError):
        return None
    finally:
        model.train(was_training)
    return not torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)


def load_tokenizer(tokenizer, model, role: str):
    """The tokenizer given, or the one saved with the model (its name or path)."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        tokenizer = source_name(model)
        if tokenizer is None:
            raise ValueError(f"the {role} was given as an object without a name or path: pass its tokenizer too "
                             f"({role}_tokenizer=...)")
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if not getattr(tokenizer, "is_fast", False) and not hasattr(tokenizer, "token_to_id"):
        raise ValueError(f"the {role}'s tokenizer {type(tokenizer).__name__} is not a fast tokenizer; fastvae.hf needs "
                         f"one (AutoTokenizer.from_pretrained(..., use_fast=True))")
    return tokenizer


def special_id(tokenizer, config, *names: str) -> int | None:
    """The first of the tokenizer's (then the config's) `<name>_token_id`s that is set."""
    for holder in (tokenizer, config):
        for name in names:
            value = getattr(holder, f"{name}_token_id", None)
            if isinstance(value, int):
                return value
            if isinstance(value, (list, tuple)) and value:  # some configs list several end tokens
                return int(value[0])
    return None


def cache_argument(model) -> str:
    """The forward() keyword of the key/value cache: `cache` from transformers 5.x, `past_key_values` before."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def key_value_cache(pairs, config):
    """A transformers cache holding the given per-layer (key, value) pairs, each [N, kv_heads, positions, head_dim]."""
    from transformers import DynamicCache

    parameters = inspect.signature(DynamicCache.__init__).parameters
    if "ddp_cache_data" in parameters:
        return DynamicCache(pairs, config=config) if "config" in parameters else DynamicCache(pairs)
    return DynamicCache.from_legacy_cache(tuple(pairs))  # transformers < 4.56


def empty_cache(config):
    from transformers import DynamicCache

    parameters = inspect.signature(DynamicCache.__init__).parameters
    return DynamicCache(config=config) if "config" in parameters else DynamicCache()
