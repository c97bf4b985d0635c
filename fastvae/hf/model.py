"""`HFTextVAE`: a text VAE from a Hugging Face encoder and a causal language model decoder (Optimus, Li et al. 2020),
implementing fastvae's model protocol (fastvae.models.protocol) so every recipe, metric and decoding strategy runs
on it.

- q(z|x): the encoder's hidden state at the first position (`[CLS]` for BERT) -> Linear -> (mu, logvar).
- p(x|z): the decoder language model with z injected as one extra key/value position in every layer (through the
  model's cache of past keys and values), as an offset added to every input embedding, or both (injection.py).
- Tokens: fastvae's ids over the decoder tokenizer's tokens (`TokenizerVocab`, `self.vocab`). `<s>`/`</s>` are the
  decoder's begin/end tokens (GPT-2: both `<|endoftext|>`). The encoder reads each decoder token re-tokenized by the
  encoder's tokenizer (the token's text, at most `max_encoder_pieces` encoder tokens each; identical when both
  models share a tokenizer), wrapped in the encoder's `[CLS] ... [SEP]` (or its begin/end tokens): the encoder sees
  the sentence, split at the decoder's token boundaries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.subword import TokenizerVocab, backend_tokenizer
from ..data.vocab import BOS, EOS, PAD, UNK
from .injection import LatentInjection, attention_shape, parse_inject
from .loading import (cache_argument, check_causal_lm, config_dict, config_from_dict, key_value_cache, load_decoder,
                      load_encoder, load_tokenizer, source_name, special_id)

# logits kept at once when -log p(x|z) is computed for K samples per sentence (elements; 2^27 floats = 512 MiB)
LOGITS_BUDGET = 1 << 27
BUILDER = "fastvae.hf:HFTextVAE.from_source"


def _check_latent_dim(latent_dim) -> int:
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}")
    return latent_dim


def _checkpointing(model) -> bool:
    """Whether transformers' activation (gradient) checkpointing is on (the property's name changed in 5.x)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


class HFTextVAE(nn.Module):
    """A VAE from a Hugging Face encoder and causal LM decoder (module docstring).

    `encoder`/`decoder`: a model name (`bert-base-uncased`, `gpt2`), a local path, a transformers config (random
    weights) or a model instance. Their tokenizers are loaded from the same name or path unless given.
    `inject`: "memory", "embedding", "both" or a subset. `decoder_is_pretrained` (default: True when the decoder's
    weights were loaded) makes pretrain-fb keep the decoder instead of re-initialising it (recipe option
    reset_decoder)."""

    # the token maps (persistent buffers, _setup) and the vocabulary (None in a model rebuilt from a checkpoint,
    # whose own vocabulary entry load_model returns): declared for type checkers
    fastvae_to_decoder: torch.Tensor
    fastvae_to_encoder: torch.Tensor
    decoder_to_fastvae: torch.Tensor
    vocab: TokenizerVocab | None

    def __init__(self, encoder, decoder, *, latent_dim: int = 32, inject=("memory", "embedding"),
                 encoder_tokenizer=None, decoder_tokenizer=None, decoder_is_pretrained: bool | None = None,
                 max_encoder_pieces: int = 8):
        super().__init__()
        latent_dim, inject = _check_latent_dim(latent_dim), parse_inject(inject)
        if isinstance(max_encoder_pieces, bool) or not isinstance(max_encoder_pieces, int) or max_encoder_pieces < 1:
            raise ValueError(f"max_encoder_pieces must be an int >= 1, got {max_encoder_pieces!r}")
        encoder_model, _ = load_encoder(encoder)
        decoder_model, loaded = load_decoder(decoder)
        encoder_tokenizer = load_tokenizer(encoder_tokenizer, encoder_model, "encoder")
        decoder_tokenizer = load_tokenizer(decoder_tokenizer, decoder_model, "decoder")
        self.vocab = TokenizerVocab(decoder_tokenizer)
        pretrained = loaded if decoder_is_pretrained is None else bool(decoder_is_pretrained)
        self._setup(encoder_model, decoder_model, latent_dim, inject, len(self.vocab), max_encoder_pieces, pretrained,
                    {"encoder": encoder if isinstance(encoder, str) else source_name(encoder_model),
                     "decoder": decoder if isinstance(decoder, str) else source_name(decoder_model)})
        self._fill_token_maps(encoder_tokenizer, decoder_tokenizer)

    @classmethod
    def from_source(cls, *, encoder_config: dict, decoder_config: dict, latent_dim: int, inject, vocab_size: int,
                    encoder_pieces: int, decoder_is_pretrained: bool, encoder_name=None, decoder_name=None):
        """The model a checkpoint's `model_source` describes, with random weights and empty token maps: the caller
        loads the checkpoint's state dict (weights and token maps) into it. Reads no files and downloads nothing."""
        encoder_model, _ = load_encoder(config_from_dict(encoder_config))
        decoder_model, _ = load_decoder(config_from_dict(decoder_config))
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.vocab = None  # the checkpoint's own vocabulary entry rebuilds it (load_model returns it)
        model._setup(encoder_model, decoder_model, _check_latent_dim(latent_dim), parse_inject(inject),
                     int(vocab_size), int(encoder_pieces), bool(decoder_is_pretrained),
                     {"encoder": encoder_name, "decoder": decoder_name})
        return model

    def _setup(self, encoder, decoder, latent_dim, inject, vocab_size, encoder_pieces, decoder_is_pretrained, names):
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.inject, self.vocab_size = latent_dim, inject, vocab_size
        self.decoder_is_pretrained = decoder_is_pretrained
        self.names = names
        encoder_hidden = encoder.config.get_text_config().hidden_size if hasattr(encoder.config, "get_text_config") \
            else encoder.config.hidden_size
        self.to_posterior = nn.Linear(encoder_hidden, 2 * latent_dim)
        self.injection = LatentInjection(latent_dim, inject, decoder.get_input_embeddings().embedding_dim,
                                         attention_shape(decoder.config))
        self.encoder_max_positions = getattr(encoder.config, "max_position_embeddings", None)
        self.cache_argument = cache_argument(decoder)
        decoder_size = decoder.get_output_embeddings().weight.shape[0]
        # token maps (persistent buffers: saved with the weights, so a checkpoint needs no tokenizer files)
        self.register_buffer("fastvae_to_decoder", torch.zeros(vocab_size, dtype=torch.long))
        self.register_buffer("fastvae_to_encoder", torch.full((vocab_size, encoder_pieces), -1, dtype=torch.long))
        self.register_buffer("decoder_to_fastvae", torch.full((decoder_size,), -1, dtype=torch.long))
        self.fused_head = self._head_is_plain_linear()

    def _fill_token_maps(self, encoder_tokenizer, decoder_tokenizer) -> None:
        vocab = self.vocab
        assert vocab is not None, "the constructor sets the vocabulary before the token maps"
        size = len(vocab)
        decoder_config = self.decoder.config
        eos = special_id(decoder_tokenizer, decoder_config, "eos", "sep")
        if eos is None:
            raise ValueError("the decoder's tokenizer and config name no end-of-sentence token (eos_token_id): set "
                             "tokenizer.eos_token")
        bos = special_id(decoder_tokenizer, decoder_config, "bos", "cls")
        bos = eos if bos is None else bos  # GPT-2 style: one <|endoftext|> begins and ends
        unk = special_id(decoder_tokenizer, None, "unk")
        to_decoder = torch.tensor(vocab.tokenizer_ids, dtype=torch.long)
        to_decoder[PAD], to_decoder[BOS], to_decoder[EOS] = eos, bos, eos  # <pad> is never predicted (masked)
        to_decoder[UNK] = eos if unk is None else unk
        decoder_size = self.decoder_to_fastvae.shape[0]
        if int(to_decoder.max()) >= decoder_size:
            raise ValueError(f"the decoder's tokenizer has ids up to {int(to_decoder.max())}, but the decoder predicts "
                             f"{decoder_size} tokens: the tokenizer does not belong to this decoder")
        back = torch.full((decoder_size,), -1, dtype=torch.long)
        back[to_decoder[4:]] = torch.arange(4, size)
        if unk is not None:
            back[unk] = UNK
        back[eos] = EOS
        self.fastvae_to_decoder.copy_(to_decoder)
        self.decoder_to_fastvae.copy_(back)

        pieces = self.fastvae_to_encoder.shape[1]
        encoder_config = self.encoder.config
        encoder_backend, decoder_backend = backend_tokenizer(encoder_tokenizer), backend_tokenizer(decoder_tokenizer)
        if encoder_backend.to_str() == decoder_backend.to_str():
            rows = [[i] for i in vocab.tokenizer_ids[4:]]  # one tokenizer for both: the same ids
        else:
            texts = [vocab._join([token]) for token in vocab.itos[4:]]
            rows = [e.ids for e in encoder_backend.encode_batch(texts, add_special_tokens=False)]
        table = torch.full((size, pieces), -1, dtype=torch.long)
        for i, row in enumerate(rows, start=4):
            row = row[:pieces]
            table[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        for fastvae_id, names in ((BOS, ("cls", "bos")), (EOS, ("sep", "eos")), (UNK, ("unk",))):
            value = special_id(encoder_tokenizer, encoder_config, *names)
            if value is not None:
                table[fastvae_id, 0] = value
        self.fastvae_to_encoder.copy_(table)

    # ------------------------------------------------------------------ the protocol
    def encoder_parameters(self):
        return [*self.encoder.parameters(), *self.to_posterior.parameters()]

    def decoder_parameters(self):
        return [*self.decoder.parameters(), *self.injection.parameters()]

    def reset_decoder_parameters(self) -> None:
        """The decoder as transformers initialises a new one of its config (pretrain-fb's reset, when asked)."""
        fresh = type(self.decoder)(self.decoder.config)
        self.decoder.load_state_dict(fresh.state_dict())
        self.injection.reset_parameters()

    def model_source(self) -> dict:
        return {"builder": BUILDER, "arguments": {
            "encoder_config": config_dict(self.encoder), "decoder_config": config_dict(self.decoder),
            "latent_dim": self.latent_dim, "inject": list(self.inject), "vocab_size": self.vocab_size,
            "encoder_pieces": int(self.fastvae_to_encoder.shape[1]),
            "decoder_is_pretrained": bool(self.decoder_is_pretrained),
            "encoder_name": self.names["encoder"], "decoder_name": self.names["decoder"]}}

    def _encoder_inputs(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """fastvae ids -> (encoder ids [B, L], attention mask [B, L]): each token's encoder pieces, packed left."""
        in_sentence = torch.arange(tokens.shape[1], device=tokens.device) < lengths.unsqueeze(1)
        pieces = self.fastvae_to_encoder[tokens].masked_fill(~in_sentence.unsqueeze(2), -1).flatten(1)
        valid = pieces >= 0
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        pieces = pieces.gather(1, order)
        counts = valid.sum(1)
        width = int(counts.max())
        if self.encoder_max_positions is not None:
            width = min(width, int(self.encoder_max_positions))  # longer sentences: the encoder reads their start
        mask = torch.arange(width, device=tokens.device) < counts.unsqueeze(1)
        return pieces[:, :width].clamp(min=0).masked_fill(~mask, 0), mask.long()

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor):
        ids, mask = self._encoder_inputs(tokens, lengths)
        first = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        mu, logvar = self.to_posterior(first.to(self.to_posterior.weight.dtype)).float().chunk(2, dim=-1)
        return mu, logvar

    def decoder_logits(self, inputs: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The decoder's logits [N, T, V_decoder] for decoder ids `inputs` [N, T] (mask: real positions) given z."""
        return self._run_decoder(self.decoder, inputs, mask, z).logits

    def _decoder_dtype(self) -> torch.dtype | None:
        """The dtype z's memory must have to join the decoder's keys: its weights' (e.g. a decoder loaded in
        bfloat16), or None under autocast, where the memory layer's output already has the autocast dtype."""
        weight = self.decoder.get_input_embeddings().weight
        return None if torch.is_autocast_enabled(weight.device.type) else weight.dtype

    def _run_decoder(self, module, inputs, mask, z):
        """`module` (the decoder, or its body without the LM head) on `inputs` with z injected."""
        positions = inputs.shape[1] + ("memory" in self.inject)
        limit = getattr(self.decoder.config, "max_position_embeddings", None)
        if isinstance(limit, int) and positions > limit:
            raise ValueError(f"a sentence of {inputs.shape[1]} decoder tokens (plus z's memory position) is longer "
                             f"than the decoder's {limit} positions: cut long lines (load_corpus(..., max_len=WORDS))")
        embeds = self.decoder.get_input_embeddings()(inputs)
        offset = self.injection.embedding_offset(z)
        if offset is not None:
            embeds = embeds + offset.to(embeds.dtype)
        memory = self.injection.memory(z, self._decoder_dtype())
        if memory is not None and self.training and _checkpointing(self.decoder):
            raise ValueError("z's memory position reaches the decoder through its key/value cache, which transformers "
                             "drops under gradient checkpointing: turn it off or use inject='embedding'")
        attention = mask.long()
        extra = {}
        if memory is not None:
            extra[self.cache_argument] = key_value_cache(memory, self.decoder.config)
            attention = torch.cat([attention.new_ones(attention.shape[0], 1), attention], dim=1)
        return module(inputs_embeds=embeds, attention_mask=attention, use_cache=memory is not None, **extra)

    def _sentence_nll(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.fused_head and not torch.is_grad_enabled():  # evaluation: the logits never exist at once
            return self._fused_nll(tokens, lengths, z, 1.0)[1]
        width = int(lengths.max())
        tokens = tokens[:, :width]
        ids = self.fastvae_to_decoder[tokens]
        mask = tokens[:, 1:] != PAD
        logits = self.decoder_logits(ids[:, :-1], mask, z)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none")
        return (nll.view(mask.shape) * mask).sum(1)

    def reconstruction_loss(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor, scale: float = 1.0):
        """(scale x sum of -log p(x|z), per-sentence values detached): the training loss. When the decoder's output
        layer is a plain linear map (checked at construction: `fused_head`), its logits and the cross-entropy are one
        fused op (fastvae.ops.linear_cross_entropy), so the [tokens, vocabulary] logits never exist at once."""
        if not self.fused_head:
            nll = self._sentence_nll(tokens, lengths, z)
            return scale * nll.sum(), nll.detach()
        return self._fused_nll(tokens, lengths, z, scale)

    def _fused_nll(self, tokens, lengths, z, scale: float):
        """(scale x sum of -log p(x|z), per sentence detached) through the fused output layer + cross-entropy; under
        autocast its GEMMs read a copy of the output weight in the autocast dtype (the loss stays float32)."""
        from ..ops.linear_cross_entropy import linear_cross_entropy

        width = int(lengths.max())
        tokens = tokens[:, :width]
        ids = self.fastvae_to_decoder[tokens]
        mask = tokens[:, 1:] != PAD
        hidden = self._run_decoder(self.decoder.base_model, ids[:, :-1], mask, z).last_hidden_state
        weight = self.decoder.get_output_embeddings().weight
        device_type = weight.device.type
        compute = None
        if torch.is_autocast_enabled(device_type) and weight.dtype == torch.float32:
            compute = weight.to(torch.get_autocast_dtype(device_type))
        row_scale = mask.reshape(-1).to(torch.float32) * scale
        loss, nll = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype), weight,
                                         ids[:, 1:].reshape(-1), row_scale, weight_compute=compute)
        return loss, (nll.view(mask.shape) * mask).sum(1).detach()

    @torch.no_grad()
    def _head_is_plain_linear(self) -> bool:
        """True when the decoder's logits are exactly its body's last hidden state times the output weight (GPT-2
        and most causal LMs; not a head with a bias, logit scaling or soft-capping): measured on three tokens."""
        head, body = self.decoder.get_output_embeddings(), self.decoder.base_model
        if not isinstance(head, nn.Linear) or head.bias is not None or body is self.decoder:
            return False
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            ids = torch.tensor([[0, 1, 2]], device=head.weight.device)
            logits = self.decoder(input_ids=ids).logits
            hidden = body(input_ids=ids).last_hidden_state
        except Exception:  # a body that cannot run alone: keep the plain path
            return False
        finally:
            self.decoder.train(was_training)
        return bool(torch.allclose(logits.float(), head(hidden).float(), atol=1e-5, rtol=1e-4))

    def reconstruction(self, tokens: torch.Tensor, lengths: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per sentence: [B] for z [B, nz], [B, K] for z [B, K, nz] (chunked over the samples)."""
        if z.dim() == 2:
            return self._sentence_nll(tokens, lengths, z)
        B, K = z.shape[:2]
        flat_tokens, flat_lengths = tokens.repeat_interleave(K, 0), lengths.repeat_interleave(K, 0)
        flat_z = z.reshape(B * K, -1)
        rows = max(1, LOGITS_BUDGET // (int(lengths.max()) * self.decoder_to_fastvae.shape[0]))
        parts = [self._sentence_nll(flat_tokens[i:i + rows], flat_lengths[i:i + rows], flat_z[i:i + rows])
                 for i in range(0, B * K, rows)]
        return torch.cat(parts).view(B, K)

    @torch.no_grad()
    def generate(self, z, bos_id, eos_id, max_len, *, strategy="greedy", temperature=1.0, top_k=0, beam_size=5,
                 generator=None):
        from .decoding import generate

        return generate(self, z, bos_id, eos_id, max_len, strategy=strategy, temperature=temperature, top_k=top_k,
                        beam_size=beam_size, generator=generator)

    def extra_repr(self) -> str:
        return (f"encoder={self.names['encoder']!r}, decoder={self.names['decoder']!r}, latent_dim={self.latent_dim}, "
                f"inject={'+'.join(self.inject)}, vocab={self.vocab_size}")


__all__ = ["HFTextVAE", "check_causal_lm"]
