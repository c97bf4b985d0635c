"""One training step of a transformer VAE: fastvae.hf.HFTextVAE under fastvae's Trainer against a plain Hugging Face
loop written the usual way, side by side (issue 19, item 6).

Run:  pytest benchmarks/bench_hf_step.py --benchmark-only --benchmark-json /tmp/hf_step.json
      (`-k quick`: the same, it has one size). Or `python benchmarks/run_all.py --suites hf_step`.
      Without --benchmark-only, `test_both_providers_compute_the_same_loss` checks the two do the same math.
Skips when transformers/tokenizers are missing (`pip install 'fastvae[hf]'`).

Workload (random weights, built from configs; nothing downloaded):
- decoder: GPT-2 (`GPT2LMHeadModel`), 4 layers, 256 dims, 4 heads, vocabulary 32,000 (a WordLevel tokenizer over
  the benchmark's Zipf-distributed synthetic words, benchmarks/vae_baseline.py `synthetic_sentences`);
- encoder: BERT (`BertModel`), 2 layers, 256 dims, 4 heads, feed-forward 1,024, the same tokenizer;
- latent 32, z injected as one key/value memory position in every decoder layer and as an offset added to every
  input embedding (Optimus, `inject="both"`); batch 32 sentences of 10 words: 12 encoder tokens ([CLS] .. [SEP]),
  11 decoder inputs and 11 targets (<|endoftext|> w1 .. w10 <|endoftext|>); dropout as the configs' (0.1), on.
Providers (per precision group):
- `hf-plain`: the hand-written loop: encoder -> [CLS] -> Linear -> mu, logvar -> z = mu + eps * sigma -> Linear to
  per-layer keys/values in a DynamicCache + Linear to an embedding offset -> `decoder(inputs_embeds=...,
  attention_mask=..., cache/past_key_values=..., labels=..., shift_labels=..., num_items_in_batch=B)` (Hugging
  Face's own loss: the sum over the batch's tokens / B = the mean over sentences of each sentence's summed NLL, as
  fastvae's) + the analytic KL -> backward -> clip 5 -> Adam step. `hf-plain-bf16`: the same under
  `torch.autocast(bfloat16)`.
- `fastvae`: the same models inside `HFTextVAE`, one step of fastvae's Trainer for the `vae` recipe (its policy's
  `step` on the trainer, as benchmarks/bench_training.py drives it): the same layers, the same loss, with the
  decoder's output layer and cross-entropy fused (the [tokens, 32,000] logits never exist at once).
  `fastvae-bf16`: `--precision bf16` (autocast), where fastvae.precision resolves `auto` to bf16.
Both providers clip the gradient norm over every parameter at 5 and step Adam (lr 1e-4) on every parameter.
extra_info: provider/shape/device/suite, items_per_round (target tokens), flops_per_round (the GEMM FLOPs of forward
+ backward: 3x the forward's).
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import tempfile

import pytest
import torch


def _missing() -> str | None:
    """Why the suite cannot run here, or None. (Each test skips itself: a module-level skip would make pytest exit
    with 5, which benchmarks/run_all.py and scripts/gpu_check.sh count as a failed suite.)"""
    try:
        import tokenizers  # noqa: F401
        import transformers
    except ImportError as exc:
        return f"needs transformers and tokenizers ({exc}): pip install 'fastvae[hf]'"
    if not transformers.utils.is_torch_available():
        return f"transformers {transformers.__version__} does not support torch {torch.__version__}"
    return None


MISSING = _missing()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_training import policy_stepper  # noqa: E402
from vae_baseline import synthetic_sentences, write_corpus_files  # noqa: E402

from fastvae.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as bench_training: every provider under the allocator settings fastvae's trainer applies
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DEVICE_NAME = torch.cuda.get_device_name() if ON_GPU else f"cpu ({torch.get_num_threads()} threads)"
BATCH, WORDS, LATENT = 32, 10, 32
VOCAB = 32000  # tokenizer entries: 5 specials + word types
SPECIAL_TOKENS = ["<|endoftext|>", "[UNK]", "[PAD]", "[CLS]", "[SEP]"]
WORD_TYPES = VOCAB - len(SPECIAL_TOKENS)
DECODER = dict(layers=4, dim=256, heads=4)
ENCODER = dict(layers=2, dim=256, heads=4, ffn=1024)
LR, CLIP = 1e-4, 5.0
NUM_TRAIN = 40 * BATCH
STEPS = 20 if ON_GPU else 2  # training steps per round
ROUNDS = 10 if ON_GPU else 8
PROVIDERS = ["hf-plain", "fastvae", "hf-plain-bf16", "fastvae-bf16"]
PRECISION = {"hf-plain": "fp32", "fastvae": "fp32", "hf-plain-bf16": "bf16", "fastvae-bf16": "bf16"}
SHAPE = (f"gpt2 {DECODER['layers']}x{DECODER['dim']} + bert {ENCODER['layers']}x{ENCODER['dim']} B={BATCH} "
         f"T={WORDS + 1} V={VOCAB} nz={LATENT} inject=both")


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@functools.lru_cache(maxsize=1)
def bench_text():
    """(word ids [N, WORDS] in [4, 4 + WORD_TYPES), a folder with train/valid/test.txt of them: words `w<id>`)."""
    gen = torch.Generator().manual_seed(1234)
    ids = synthetic_sentences(NUM_TRAIN + 2 * BATCH, WORDS, WORD_TYPES + 4, gen)
    directory = tempfile.mkdtemp(prefix="fastvae-bench-hf-")
    write_corpus_files(ids, directory, valid=BATCH, test=BATCH)
    return ids, directory


@functools.lru_cache(maxsize=1)
def tokenizers_():
    """(decoder tokenizer, encoder tokenizer): one WordLevel vocabulary of VOCAB entries (the specials, then
    `w4` .. `w<WORD_TYPES + 3>`), GPT-2's specials on one, BERT's on the other."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{4 + i}": len(SPECIAL_TOKENS) + i for i in range(WORD_TYPES)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    decoder = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      unk_token="[UNK]")
    encoder = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]")
    return decoder, encoder


def word_to_token(ids: torch.Tensor) -> torch.Tensor:
    return ids - 4 + len(SPECIAL_TOKENS)


def build_models(seed: int = 0):
    """(encoder, decoder): random weights from `seed`, the same for every provider."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    torch.manual_seed(seed)
    eos = SPECIAL_TOKENS.index("<|endoftext|>")
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=DECODER["dim"],
                                         n_layer=DECODER["layers"], n_head=DECODER["heads"], bos_token_id=eos,
                                         eos_token_id=eos))
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=ENCODER["dim"], num_hidden_layers=ENCODER["layers"],
                                   num_attention_heads=ENCODER["heads"], intermediate_size=ENCODER["ffn"],
                                   max_position_embeddings=64, pad_token_id=SPECIAL_TOKENS.index("[PAD]")))
    return encoder, decoder


def flops_per_step() -> tuple[int, int]:
    """(target tokens, GEMM FLOPs of forward + backward) of one step: per layer and token 2 x 12 d^2 (the four
    attention projections and the 4d feed-forward) + 2 x 2 x positions x d (scores, weighted values); the decoder's
    output layer 2 d V per token; backward twice the forward. The latent layers (< 0.1%) are left out."""
    tokens_dec, tokens_enc = BATCH * (WORDS + 1), BATCH * (WORDS + 2)
    d_dec, d_enc = DECODER["dim"], ENCODER["dim"]
    decoder = DECODER["layers"] * (24 * d_dec ** 2 + 4 * (WORDS + 2) * d_dec) + 2 * d_dec * VOCAB
    encoder = ENCODER["layers"] * (8 * d_enc ** 2 + 4 * d_enc * ENCODER["ffn"] + 4 * (WORDS + 2) * d_enc)
    return tokens_dec, 3 * (tokens_dec * decoder + tokens_enc * encoder)


# ----------------------------------------------------------------------------- hf-plain: the usual loop
class PlainOptimus(torch.nn.Module):
    """The hand-written Optimus VAE: the models plus the three latent layers."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        config = decoder.config
        self.layers, self.heads = config.n_layer, config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.to_posterior = torch.nn.Linear(encoder.config.hidden_size, 2 * LATENT)
        self.to_memory = torch.nn.Linear(LATENT, self.layers * 2 * self.heads * self.head_dim)
        self.to_embedding = torch.nn.Linear(LATENT, config.n_embd)
        # transformers 5.x names the cache argument `cache`, earlier releases `past_key_values`
        self.cache_kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"

    def encode(self, encoder_ids):
        first = self.encoder(input_ids=encoder_ids, attention_mask=torch.ones_like(encoder_ids)).last_hidden_state[:, 0]
        mu, logvar = self.to_posterior(first).float().chunk(2, -1)
        return mu, logvar

    def decoder_loss(self, decoder_ids, z):
        """Hugging Face's loss for decoder_ids[:, 1:] given decoder_ids[:, :-1] and z: the batch's summed NLL / B."""
        from transformers import DynamicCache

        n = z.shape[0]
        inputs, targets = decoder_ids[:, :-1], decoder_ids[:, 1:].contiguous()
        memory = self.to_memory(z).view(n, self.layers, 2, self.heads, 1, self.head_dim)
        pairs = [(memory[:, i, 0], memory[:, i, 1]) for i in range(self.layers)]
        parameters = inspect.signature(DynamicCache.__init__).parameters
        if "ddp_cache_data" in parameters:
            cache = DynamicCache(pairs, config=self.decoder.config) if "config" in parameters else DynamicCache(pairs)
        else:  # transformers < 4.56
            cache = DynamicCache.from_legacy_cache(tuple(pairs))
        embeds = self.decoder.get_input_embeddings()(inputs) + self.to_embedding(z).unsqueeze(1)
        attention = torch.ones(n, inputs.shape[1] + 1, dtype=torch.long, device=inputs.device)  # z's position too
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention, labels=targets, shift_labels=targets,
                           num_items_in_batch=n, use_cache=True, **{self.cache_kw: cache})
        return out.loss

    def loss(self, encoder_ids, decoder_ids, eps):
        mu, logvar = self.encode(encoder_ids)
        z = mu + eps * (0.5 * logvar).exp()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
        return self.decoder_loss(decoder_ids, z) + kl


def plain_batches(device):
    """[(encoder ids [B, 12], decoder ids [B, 12])] of the training sentences, in order."""
    ids, _ = bench_text()
    words = word_to_token(ids[:NUM_TRAIN])
    n = words.shape[0]
    eos, cls, sep = (SPECIAL_TOKENS.index(t) for t in ("<|endoftext|>", "[CLS]", "[SEP]"))
    decoder_ids = torch.cat([torch.full((n, 1), eos), words, torch.full((n, 1), eos)], 1)
    encoder_ids = torch.cat([torch.full((n, 1), cls), words, torch.full((n, 1), sep)], 1)
    return [(encoder_ids[i:i + BATCH].to(device), decoder_ids[i:i + BATCH].to(device)) for i in range(0, n, BATCH)]


def plain_stepper(precision: str = "fp32"):
    encoder, decoder = build_models()
    model = PlainOptimus(encoder, decoder).to(DEVICE).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    batches = plain_batches(DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    state = {"position": 0}

    def step():
        encoder_ids, decoder_ids = batches[state["position"] % len(batches)]
        eps = torch.randn(encoder_ids.shape[0], LATENT, device=DEVICE, generator=gen)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.loss(encoder_ids, decoder_ids, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        state["position"] += 1

    return step


# ----------------------------------------------------------------------------- fastvae: HFTextVAE + Trainer
def fastvae_model():
    from fastvae.hf import HFTextVAE

    encoder, decoder = build_models()
    decoder_tokenizer, encoder_tokenizer = tokenizers_()
    torch.manual_seed(1)
    return HFTextVAE(encoder, decoder, latent_dim=LATENT, inject="both", encoder_tokenizer=encoder_tokenizer,
                     decoder_tokenizer=decoder_tokenizer)


_CORPUS: dict = {}


def bench_corpus(vocab):
    """The benchmark text encoded with the model's vocabulary (every provider's model has the same one)."""
    from fastvae.data import load_corpus

    if "corpus" not in _CORPUS:
        _CORPUS["corpus"] = load_corpus(bench_text()[1], vocab=vocab)
    return _CORPUS["corpus"]


def fastvae_stepper(precision: str = "fp32"):
    """The vae recipe's step exactly as fastvae.Trainer runs it inside an epoch (its policy on the trainer)."""
    from fastvae.training import Trainer

    model = fastvae_model()
    trainer = Trainer(model, bench_corpus(model.vocab), recipe="vae", epochs=10, device=DEVICE, out_dir=None,
                      iw_samples=0, progress=False, verbose=False, batch_size=BATCH, precision=precision,
                      optimizer="adam", lr=LR, clip=CLIP)
    return policy_stepper(trainer)


STEPPERS = {"hf-plain": plain_stepper, "fastvae": fastvae_stepper,
            "hf-plain-bf16": functools.partial(plain_stepper, precision="bf16"),
            "fastvae-bf16": functools.partial(fastvae_stepper, precision="bf16")}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hf_step_quick(benchmark, provider):
    from fastvae.precision import resolve

    if MISSING:
        pytest.skip(MISSING)
    if PRECISION[provider] == "bf16" and resolve("auto", DEVICE) != "bf16":
        pytest.skip("no native bf16 matrix instructions here (fastvae.precision): bf16 would be emulated")
    step = STEPPERS[provider]()
    tokens, flops = flops_per_step()
    precision = PRECISION[provider]
    benchmark.group = f"hf-step {precision} {SHAPE}"
    benchmark.extra_info.update(provider=provider, shape=SHAPE, device=DEVICE_NAME, suite="hf_step", recipe="vae",
                                item="tokens", items_per_round=tokens * STEPS, flops_per_round=flops * STEPS,
                                steps_per_round=STEPS, precision=precision)

    def round_():
        for _ in range(STEPS):
            step()
        _sync()

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_both_providers_compute_the_same_loss():
    """The same weights, z and sentences: the plain loop's loss (Hugging Face's materialised logits) equals
    HFTextVAE's reconstruction + KL (fastvae's fused output layer), and the gradients of a shared weight agree."""
    if MISSING:
        pytest.skip(MISSING)
    model = fastvae_model().eval()  # no dropout: both see the same network
    plain = PlainOptimus(model.encoder, model.decoder).eval()
    plain.to_posterior.load_state_dict(model.to_posterior.state_dict())
    plain.to_memory.load_state_dict(model.injection.to_memory.state_dict())
    plain.to_embedding.load_state_dict(model.injection.to_embedding.state_dict())
    encoder_ids, decoder_ids = plain_batches("cpu")[0]
    corpus = bench_corpus(model.vocab)
    from fastvae.data import make_batches

    batch = next(iter(make_batches(corpus.train.subset(range(BATCH)), BATCH, mode="padded", shuffle=False)))
    tokens, lengths = batch.tokens, batch.lengths
    fastvae_encoder_ids, _ = model._encoder_inputs(tokens, lengths)
    assert torch.equal(fastvae_encoder_ids, encoder_ids) and torch.equal(model.fastvae_to_decoder[tokens], decoder_ids)
    eps = torch.randn(BATCH, LATENT, generator=torch.Generator().manual_seed(0))
    expected = plain.loss(encoder_ids, decoder_ids, eps)
    weight = model.decoder.transformer.h[0].attn.c_attn.weight
    (expected_grad,) = torch.autograd.grad(expected, [weight])
    mu, logvar = model.encode(tokens, lengths)
    z = mu + eps * (0.5 * logvar).exp()
    rec, _ = model.reconstruction_loss(tokens, lengths, z, scale=1.0 / BATCH)
    got = rec + 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
    (got_grad,) = torch.autograd.grad(got, [weight])
    assert model.fused_head and torch.allclose(got, expected, rtol=1e-5, atol=1e-4), (float(got), float(expected))
    assert torch.allclose(got_grad, expected_grad, rtol=1e-3, atol=1e-6)
