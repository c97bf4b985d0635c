"""fastvae.hf: a transformer VAE from a Hugging Face encoder and causal LM decoder trains with every recipe, evaluates
with every metric, generates, reloads from checkpoints and resumes exactly, through the Python API and the CLI.

No downloads: a tiny GPT-2 and a tiny BERT are built from configs with random weights, their tokenizers trained on
the built-in corpus with the tokenizers library; both are saved with save_pretrained and loaded by path, as a user's
pretrained pair is."""
import json
import os

import pytest
import torch
from helpers import fit_until_killed

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
if not transformers.utils.is_torch_available():  # transformers 5 needs torch >= 2.6 (the suite also runs on 2.5)
    pytest.skip(f"transformers {transformers.__version__} does not support this torch", allow_module_level=True)

from fastvae.data import BUILTIN_CORPORA, Vocab  # noqa: E402
from fastvae.models import TextVAEModel, check_vae_model  # noqa: E402
from fastvae.training import Trainer  # noqa: E402
from fastvae.training.checkpoint import load_model, read_checkpoint  # noqa: E402

CORPUS_SIZES = dict(seed=3, n_train=64, n_valid=16, n_test=12)
FAST = dict(progress=False, verbose=False, iw_samples=3, eval_batch_size=16, batch_size=16, epochs=1,
            optimizer="adam", lr=1e-3)


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers(one_thread):
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # no load reports for the tiny models
    logging.disable_progress_bar()
    yield
    logging.set_verbosity(verbosity)
    logging.enable_progress_bar()


def _texts():
    corpus = BUILTIN_CORPORA["grammar"](seed=0, n_train=400, n_valid=1, n_test=1)
    return [corpus.vocab.decode(s.tolist()) for s in corpus.train.sentences]


def save_tiny_pair(root: str) -> tuple:
    """A byte-level BPE GPT-2 (2 layers, 32 dims) and a WordPiece BERT (2 layers, 32 dims), random weights, their
    tokenizers trained on the built-in corpus (fastvae.hf.scratch), saved as a user's pretrained models are. Returns
    their paths."""
    from fastvae.hf.scratch import save_scratch_pair

    return save_scratch_pair(root, _texts(), layers=2, dim=32, heads=2, decoder_vocab=400, encoder_vocab=300)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(str(tmp_path_factory.mktemp("hf-models")))


def make_model(pair, seed=0, **options):
    from fastvae.hf import HFTextVAE

    torch.manual_seed(seed)
    return HFTextVAE(pair[0], pair[1], latent_dim=options.pop("latent_dim", 8), **options)


@pytest.fixture(scope="module")
def corpus(pair):
    from fastvae.hf import load_corpus

    return load_corpus("grammar", make_model(pair).vocab, **CORPUS_SIZES)


def batch_of(corpus, n=3):
    from fastvae.data import make_batches

    return next(iter(make_batches(corpus.valid.subset(range(n)), n, mode="padded", shuffle=False)))


def test_the_model_implements_the_protocol_and_its_vocabulary_round_trips(pair, corpus, tmp_path):
    from fastvae.hf import TokenizerVocab

    model = make_model(pair)
    assert isinstance(model, TextVAEModel) and model.decoder_is_pretrained and model.inject == ("memory", "embedding")
    check_vae_model(model)
    vocab = model.vocab
    assert isinstance(vocab, TokenizerVocab) and vocab.itos[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert corpus.vocab == vocab and len(vocab) == model.vocab_size
    text = "the pizza was really delicious ."
    assert vocab.decode(vocab.encode(text.split())) == text
    from fastvae.data import load_corpus
    from fastvae.data.builtin import write_corpus

    write_corpus(BUILTIN_CORPORA["grammar"](**CORPUS_SIZES), str(tmp_path))
    from transformers import AutoTokenizer

    from_files = load_corpus(str(tmp_path), tokenizer=AutoTokenizer.from_pretrained(pair[1]))  # a tokenizer's text
    assert from_files.vocab == vocab and all(torch.equal(a, b) for a, b in zip(from_files.test.sentences,
                                                                               corpus.test.sentences))
    again = Vocab.from_dict(vocab.to_dict())  # as a checkpoint stores and load_model rebuilds it
    assert isinstance(again, TokenizerVocab) and again == vocab and again.decode(vocab.encode(text.split())) == text
    from transformers import AutoModel, AutoModelForCausalLM

    from fastvae.hf import HFTextVAE

    instances = HFTextVAE(AutoModel.from_pretrained(pair[0]), AutoModelForCausalLM.from_pretrained(pair[1]),
                          latent_dim=2, inject="embedding")  # instances: their tokenizers come from their paths
    assert instances.vocab == vocab and instances.names == {"encoder": pair[0], "decoder": pair[1]}
    original = BUILTIN_CORPORA["grammar"](**CORPUS_SIZES)
    assert [vocab.decode(s.tolist()) for s in corpus.test.sentences] == \
        [original.vocab.decode(s.tolist()) for s in original.test.sentences]
    # <s> and </s> are the decoder's <|endoftext|>; the encoder reads [CLS] ... [SEP]
    decoder_tokenizer = AutoTokenizer.from_pretrained(pair[1])
    encoder_tokenizer = AutoTokenizer.from_pretrained(pair[0])
    assert model.fastvae_to_decoder[1] == model.fastvae_to_decoder[2] == decoder_tokenizer.eos_token_id
    batch = batch_of(corpus, 1)
    ids, mask = model._encoder_inputs(batch.tokens, batch.lengths)
    pieces = [encoder_tokenizer.convert_tokens_to_ids(encoder_tokenizer.tokenize(corpus.vocab.decode([i])))
              for i in batch.tokens[0, 1:int(batch.lengths[0]) - 1].tolist()]  # each decoder token's text
    expected = [encoder_tokenizer.cls_token_id, *[i for row in pieces for i in row], encoder_tokenizer.sep_token_id]
    assert ids[0].tolist() == expected and bool(mask.all())


@pytest.mark.parametrize("recipe,options", [("vae", {}), ("beta", {"beta": 0.5}), ("cyclical", {"cycles": 1}),
                                            ("aggressive", {"max_inner_steps": 2, "inner_window": 2}),
                                            ("pretrain-fb", {"target_kl": 1.0, "pretrain_epochs": 1})])
def test_every_recipe_trains_a_transformer_vae(pair, corpus, tmp_path, recipe, options):
    model = make_model(pair)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resets = []
    model.reset_decoder_parameters = lambda: resets.append(1)
    trainer = Trainer(model, corpus, recipe=recipe, out_dir=str(tmp_path), **FAST, **options)
    test = trainer.fit()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("injection.to_memory") for k in changed)
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au"):
        assert key in test and test[key] == test[key], key
    if recipe == "pretrain-fb":
        assert trainer.recipe.phases[1].reset_decoder is False and not resets  # a pretrained decoder is kept
    source = read_checkpoint(str(tmp_path / "best.pt"))["model_source"]
    assert source["builder"] == "fastvae.hf:HFTextVAE.from_source"
    assert source["arguments"]["decoder_name"] == pair[1] and source["arguments"]["inject"] == ["memory", "embedding"]


def test_pretrain_fb_resets_the_decoder_when_asked(pair, corpus):
    model = make_model(pair)
    trainer = Trainer(model, corpus, recipe="pretrain-fb", reset_decoder=True, pretrain_epochs=1, **FAST)
    assert trainer.recipe.phases[1].reset_decoder is True
    before = model.decoder.transformer.h[0].attn.c_attn.weight.detach().clone()
    model.reset_decoder_parameters()
    after = model.decoder.transformer.h[0].attn.c_attn.weight
    assert not torch.equal(before, after) and after.std() < 0.05  # GPT-2's N(0, 0.02) initialisation
    assert model.decoder.lm_head.weight is model.decoder.transformer.wte.weight  # still tied
    random_decoder = make_model(pair, decoder_is_pretrained=False)
    assert Trainer(random_decoder, corpus, recipe="pretrain-fb", **FAST).recipe.phases[1].reset_decoder is True


@pytest.mark.parametrize("inject", ["memory", "embedding", "both"])
def test_z_reaches_the_decoder_and_samples_match_single_draws(pair, corpus, inject):
    model = make_model(pair, inject=inject).eval()
    batch = batch_of(corpus)
    z = torch.randn(3, 4, model.latent_dim, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        many = model.reconstruction(batch.tokens, batch.lengths, z)
        single = torch.stack([model.reconstruction(batch.tokens, batch.lengths, z[:, k]) for k in range(4)], 1)
    assert many.shape == (3, 4) and torch.allclose(many, single, atol=1e-4, rtol=1e-5)
    assert (many.max(1).values - many.min(1).values).min() > 1e-3  # log p(x|z) depends on z
    assert (model.injection.to_memory is not None) == (inject != "embedding")
    assert (model.injection.to_embedding is not None) == (inject != "memory")
    # padding never matters: a sentence alone gives what it gives in the batch
    first = int(batch.lengths[0])
    alone = model.reconstruction(batch.tokens[:1, :first], batch.lengths[:1], z[:1, 0])
    assert torch.allclose(alone, single[:1, 0], atol=1e-4)


def test_the_fused_training_loss_equals_the_reconstruction_and_its_gradients(pair, corpus):
    model = make_model(pair).eval()  # no dropout: both paths see the same network
    assert model.fused_head  # GPT-2's head is a plain linear map: logits + cross-entropy run fused
    batch = batch_of(corpus)
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(0))
    loss, per_sentence = model.reconstruction_loss(batch.tokens, batch.lengths, z, scale=0.25)
    grads = torch.autograd.grad(loss, [model.decoder.lm_head.weight, model.injection.to_memory.weight])
    plain = model.reconstruction(batch.tokens, batch.lengths, z)
    expected = torch.autograd.grad(0.25 * plain.sum(), [model.decoder.lm_head.weight, model.injection.to_memory.weight])
    assert torch.allclose(per_sentence, plain.detach(), atol=1e-4) and not per_sentence.requires_grad
    assert torch.allclose(loss, 0.25 * plain.sum(), atol=1e-4)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_evaluation_metrics_bleu_and_every_decoding_strategy(pair, corpus):
    from fastvae import evaluate
    from fastvae.evaluation.bleu import reconstruction_bleu
    from fastvae.generation import interpolate, reconstruct, sample_prior

    model = make_model(pair).eval()
    result = evaluate(model, corpus.valid, batch_size=8, iw_samples=4, generator=torch.Generator().manual_seed(0))
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au", "probe_acc"):
        assert key in result and torch.isfinite(torch.tensor(float(result[key]))), key
    assert result["nll"] <= result["elbo"] + 1e-4
    bleu = reconstruction_bleu(model, corpus.valid, corpus.vocab, max_len=8, beam_size=2,
                               generator=torch.Generator().manual_seed(1))
    assert set(bleu) == {"bleu_greedy_mean", "bleu_greedy_sample", "bleu_beam_mean", "bleu_beam_sample"}
    sentence = corpus.vocab.decode(corpus.valid.sentences[0].tolist())
    for strategy in ("greedy", "sample", "beam"):
        out = reconstruct(model, corpus.vocab, [sentence, sentence], strategy=strategy, max_len=6, beam_size=3,
                          generator=torch.Generator().manual_seed(2))
        assert len(out) == 2 and all(isinstance(text, str) for text in out)
    samples = sample_prior(model, corpus.vocab, 3, strategy="sample", top_k=5, temperature=0.8, max_len=6,
                           generator=torch.Generator().manual_seed(3))
    assert len(samples) == 3
    assert len(interpolate(model, corpus.vocab, sentence, sentence, steps=3, max_len=6)) == 3
    # greedy decoding is the beam of width 1, and generation stops at </s> without emitting it
    z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(4))
    assert model.generate(z, 1, 2, 7) == model.generate(z, 1, 2, 7, strategy="beam", beam_size=1)
    assert all(2 not in row and len(row) <= 7 for row in model.generate(z, 1, 2, 7, strategy="sample"))
    assert max(len(row) for row in model.generate(z, 1, 2, 500)) <= 127  # the decoder's 128 positions, z's memory


def test_a_checkpoint_reloads_without_arguments_and_a_killed_run_resumes_exactly(pair, corpus, tmp_path):
    common = dict(FAST, epochs=2, checkpoint_every=3)
    reference = Trainer(make_model(pair), corpus, recipe="vae", out_dir=str(tmp_path / "a"), **common)
    reference.fit()
    killed = Trainer(make_model(pair), corpus, recipe="vae", out_dir=str(tmp_path / "b"), **common)
    fit_until_killed(killed, 6)
    resumed = Trainer.from_checkpoint(str(tmp_path / "b"), corpus)  # the model comes back from its source
    resumed.fit()
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.test_metrics == reference.test_metrics

    loaded, vocab, _ = load_model(str(tmp_path / "b" / "best.pt"))
    assert type(loaded).__name__ == "HFTextVAE" and vocab == corpus.vocab and not loaded.training
    best = read_checkpoint(str(tmp_path / "b" / "best.pt"))["model"]
    assert all(torch.equal(best[k], v) for k, v in loaded.state_dict().items())
    batch = batch_of(corpus)
    z = torch.zeros(3, loaded.latent_dim)
    reference.model.eval()
    assert torch.equal(loaded.reconstruction(batch.tokens, batch.lengths, z),
                       reference.model.reconstruction(batch.tokens, batch.lengths, z))


def test_bf16_autocast_trains_with_a_finite_loss(pair, corpus):
    trainer = Trainer(make_model(pair), corpus, recipe="vae", precision="bf16", **FAST)
    assert trainer.precision == "bf16"
    test = trainer.fit()
    assert all(torch.isfinite(torch.tensor(float(test[k]))) for k in ("rec", "kl", "nll"))
    # a pretrained pair loaded in bfloat16 (from_pretrained(..., dtype=torch.bfloat16)) runs without autocast
    model = make_model(pair).eval()
    model.encoder.to(torch.bfloat16)
    model.decoder.to(torch.bfloat16)
    batch = batch_of(corpus)
    with torch.no_grad():
        mu, _ = model.encode(batch.tokens, batch.lengths)
        assert mu.dtype == torch.float32
        assert torch.isfinite(model.reconstruction(batch.tokens, batch.lengths, mu)).all()
    assert len(model.generate(mu, 1, 2, 4, strategy="beam", beam_size=2)) == 3


def test_the_cli_trains_evaluates_and_generates(pair, tmp_path, capsys):
    from fastvae.cli import main
    from fastvae.data.builtin import write_corpus

    data = tmp_path / "data"
    write_corpus(BUILTIN_CORPORA["grammar"](**CORPUS_SIZES), str(data))
    out = str(tmp_path / "run")
    rc = main(["train", "--encoder", pair[0], "--decoder", pair[1], "--latent-dim", "4", "--inject", "memory",
               "--data", str(data), "--recipe", "vae", "--epochs", "1", "--lr", "1e-3", "--batch-size", "16",
               "--iw-samples", "2", "--out", out, "--no-progress", "--examples", "1", "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["test"]["nll"] == trained["test"]["nll"]
    source = read_checkpoint(os.path.join(out, "best.pt"))["model_source"]["arguments"]
    assert source["latent_dim"] == 4 and source["inject"] == ["memory"]
    rc = main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--data", str(data), "--iw-samples", "2",
               "--bleu", "--beam-size", "2", "--json"])
    assert rc == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["nll"] == evaluated["nll"] and evaluated["kl"] >= 0 and "bleu_beam_mean" in evaluated
    for mode in (["--mode", "sample", "--strategy", "sample", "--num", "2"],
                 ["--sentences", "the pizza was great .", "--strategy", "beam", "--beam-size", "2"],
                 ["--mode", "interpolate", "--sentences", "the pizza was great .", "i hated the hotel .",
                  "--steps", "3"]):
        rc = main(["generate", "--checkpoint", os.path.join(out, "best.pt"), "--max-len", "6", "--json", *mode])
        assert rc == 0, mode
        assert json.loads(capsys.readouterr().out)["results"]
    rc = main(["probe", "--checkpoint", os.path.join(out, "best.pt"), "--data", str(data), "--num-labels", "8",
               "--epochs", "2", "--json"])  # Li et al.'s semi-supervised probe on the transformer encoder
    assert rc == 0
    assert 0 <= json.loads(capsys.readouterr().out)["results"][0]["test_acc"] <= 1
    rc = main(["train", "--resume", out, "--no-progress", "--json"])  # finished: resumes its own data and vocab
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["train", "--encoder", pair[0], "--data", str(data), "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2 and "--encoder and --decoder go together" in capsys.readouterr().err


def test_the_built_in_corpus_trains_through_the_cli(pair, tmp_path, capsys, monkeypatch):
    from fastvae.cli import main
    from fastvae.data import grammar_corpus

    monkeypatch.setitem(BUILTIN_CORPORA, "grammar", lambda: grammar_corpus(**CORPUS_SIZES))  # a small one
    out = str(tmp_path / "run")
    rc = main(["train", "--encoder", pair[0], "--decoder", pair[1], "--latent-dim", "4", "--epochs", "1",
               "--lr", "1e-3", "--iw-samples", "2", "--out", out, "--no-progress", "--examples", "0", "--json",
               "--recipe", "vae", "--batch-size", "64"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["generate", "--checkpoint", os.path.join(out, "best.pt"), "--mode", "reconstruct", "--num", "2",
               "--max-len", "5", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert len(rows) == 2 and all(" " in row["input"] for row in rows)
    rc = main(["eval", "--checkpoint", os.path.join(out, "best.pt"), "--iw-samples", "2", "--json"])  # built in
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["num_sentences"] == CORPUS_SIZES["n_test"]


def test_the_scratch_module_writes_a_pair_that_loads(tmp_path, capsys):
    from fastvae.hf import HFTextVAE
    from fastvae.hf.scratch import main

    out = tmp_path / "pair"
    assert main([str(out), "--layers", "1", "--dim", "16", "--heads", "2", "--decoder-vocab", "300",
                 "--encoder-vocab", "200", "--seed", "1"]) == 0
    assert capsys.readouterr().out.split() == ["encoder:", str(out / "encoder"), "decoder:", str(out / "decoder")]
    for name in ("encoder", "decoder"):
        assert {"config.json", "tokenizer.json"} <= set(os.listdir(out / name))
    model = HFTextVAE(str(out / "encoder"), str(out / "decoder"), latent_dim=4)
    assert model.decoder.config.n_layer == 1 and model.decoder.config.n_embd == 16 and model.decoder_is_pretrained
    assert model.encoder.config.num_hidden_layers == 1 and model.encoder.config.hidden_size == 16
    assert len(model.vocab) <= 300 + 4 and "pizza" in model.vocab.decode(model.vocab.encode("the pizza .".split()))
    assert main([str(tmp_path / "bad"), "--dim", "15", "--heads", "2"]) == 2  # refused, nothing written
    assert "multiple of heads" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trains_evaluates_and_decodes_on_a_gpu(pair, corpus, precision):
    from fastvae import evaluate
    from fastvae.generation import sample_prior

    trainer = Trainer(make_model(pair), corpus, recipe="vae", device="cuda", precision=precision, **FAST)
    test = trainer.fit()
    assert trainer.precision == precision and all(test[k] == test[k] for k in ("rec", "kl", "nll"))
    model = trainer.model.eval()
    result = evaluate(model, corpus.valid, batch_size=8, iw_samples=3, device="cuda",
                      generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.isfinite(torch.tensor(result["nll"]))
    for strategy in ("greedy", "sample", "beam"):
        out = sample_prior(model, corpus.vocab, 2, strategy=strategy, max_len=6, beam_size=2,
                           generator=torch.Generator(device="cuda").manual_seed(1))
        assert len(out) == 2


def test_bad_arguments_are_refused_clearly(pair):
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match="inject: unknown mode"):
        make_model(pair, inject="cross-attention")
    with pytest.raises(ValueError, match="inject: unknown mode"):
        make_model(pair, inject=())
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="latent_dim must be an int >= 1"):
            make_model(pair, latent_dim=bad)
    from fastvae.hf import HFTextVAE

    with pytest.raises(ValueError, match="no language-model head"):
        HFTextVAE(pair[0], BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=16)),
                  decoder_tokenizer=pair[1])
    with pytest.raises(ValueError, match="not causal"):
        HFTextVAE(pair[0], pair[0])  # BERT under an LM head, without is_decoder: it sees the next token
    with pytest.raises(ValueError, match="encoder GPT2Model is causal"):
        HFTextVAE(pair[1], pair[1])  # a causal encoder's first position sees nothing of the sentence
    with pytest.raises(ValueError, match="strategy"):
        make_model(pair).generate(torch.zeros(1, 8), 1, 2, 4, strategy="nucleus")
    model = make_model(pair, inject="memory")
    too_long = torch.tensor([[1] + [5] * 130 + [2]])  # the tiny GPT-2 has 128 positions
    with pytest.raises(ValueError, match="longer than the decoder's 128 positions"):
        model.reconstruction(too_long, torch.tensor([132]), torch.zeros(1, 8))
    enable = getattr(model.decoder, "activation_checkpointing_enable", None) or \
        model.decoder.gradient_checkpointing_enable  # the name before transformers 5.x
    enable()  # transformers would drop z's memory position silently
    tokens, lengths = torch.tensor([[1, 5, 6, 2]]), torch.tensor([4])
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model.train().reconstruction(tokens, lengths, torch.zeros(1, 8))


def _two_rank_worker(ctx, pair):
    """One epoch of the vae recipe on this rank's rows (dropout off, so that ranks and one process agree)."""
    from fastvae.hf import load_corpus

    model = make_model(pair)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    corpus = load_corpus("grammar", model.vocab, **CORPUS_SIZES)
    options = {**FAST, "optimizer": "sgd", "lr": 0.1, "seed": 5}  # plain SGD: Adam would amplify summation order
    trainer = Trainer(model, corpus, recipe="vae", distributed=ctx, **options)
    test = trainer.fit()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "test": test}


@pytest.mark.slow
def test_two_ranks_train_the_transformer_vae_as_one_process(pair):
    """torchrun: the transformer VAE's gradients are all-reduced and every rank ends with one process's weights."""
    from test_distributed import PARAM_TOL, run_ranks

    ranks = run_ranks(_two_rank_worker, pair)
    single = _two_rank_worker(None, pair)
    for rank in ranks:
        for name, value in single["params"].items():
            torch.testing.assert_close(rank["params"][name], value, **PARAM_TOL, msg=lambda m: f"{name}: {m}")
    assert ranks[0]["test"] == ranks[1]["test"]
    assert ranks[0]["test"]["au"] == single["test"]["au"]
