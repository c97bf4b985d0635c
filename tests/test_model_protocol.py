"""A user's own VAE (written here in plain torch, nothing of fastvae's models) trains with every recipe, evaluates
with every metric, generates, resumes exactly and loads from checkpoints through fastvae.models.protocol; models
that do not implement the protocol are refused with messages that say what is missing."""
import json
import re

import pytest
import torch
from helpers import fit_until_killed
from torch import nn

from fastvae.data import BUILTIN_CORPORA, PAD
from fastvae.models import TextVAE, TextVAEModel, check_vae_model
from fastvae.models.protocol import rebuild_from_source, resolve_reset_decoder
from fastvae.training import Trainer
from fastvae.training.checkpoint import load_model, read_checkpoint


class GRUVAE(nn.Module):
    """A GRU encoder (mean-pooled states -> mu, logvar) and a GRU decoder whose first state is tanh(W z), with z
    added to every input embedding: a different family from fastvae's LSTM VAE."""

    def __init__(self, vocab_size, latent_dim=4, hidden=24, emb=16):
        super().__init__()
        self.latent_dim = latent_dim
        self.vocab_size = vocab_size
        self.enc_embed = nn.Embedding(vocab_size, emb, padding_idx=PAD)
        self.enc_rnn = nn.GRU(emb, hidden, batch_first=True)
        self.to_posterior = nn.Linear(hidden, 2 * latent_dim)
        self.dec_embed = nn.Embedding(vocab_size, emb, padding_idx=PAD)
        self.z_to_input = nn.Linear(latent_dim, emb, bias=False)
        self.z_to_state = nn.Linear(latent_dim, hidden)
        self.dec_rnn = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)
        self.resets = 0

    def encoder_parameters(self):
        return [*self.enc_embed.parameters(), *self.enc_rnn.parameters(), *self.to_posterior.parameters()]

    def decoder_parameters(self):
        return [*self.dec_embed.parameters(), *self.z_to_input.parameters(), *self.z_to_state.parameters(),
                *self.dec_rnn.parameters(), *self.out.parameters()]

    def reset_decoder_parameters(self):
        self.resets += 1
        for module in (self.dec_embed, self.z_to_input, self.z_to_state, self.dec_rnn, self.out):
            module.reset_parameters()

    def encode(self, tokens, lengths):
        states, _ = self.enc_rnn(self.enc_embed(tokens))
        mask = (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)).unsqueeze(2).float()
        pooled = (states * mask).sum(1) / lengths.unsqueeze(1).float()
        mu, logvar = self.to_posterior(pooled).chunk(2, dim=-1)
        return mu, logvar

    def _logits(self, inputs, z):  # inputs [N, T], z [N, nz]
        x = self.dec_embed(inputs) + self.z_to_input(z).unsqueeze(1)
        states, _ = self.dec_rnn(x, torch.tanh(self.z_to_state(z)).unsqueeze(0).contiguous())
        return self.out(states)

    def reconstruction(self, tokens, lengths, z):
        samples = z.dim() == 3
        B, T = tokens.shape
        K = z.shape[1] if samples else 1
        flat_z = z.reshape(B * K, -1)
        inputs = tokens[:, :-1].repeat_interleave(K, 0)
        targets = tokens[:, 1:].repeat_interleave(K, 0)
        logits = self._logits(inputs, flat_z)
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=PAD)
        nll = nll.sum(1)
        return nll.view(B, K) if samples else nll

    @torch.no_grad()
    def generate(self, z, bos_id, eos_id, max_len, *, strategy="greedy", temperature=1.0, top_k=0, beam_size=5,
                 generator=None):
        if strategy not in ("greedy", "sample"):
            raise ValueError(f"GRUVAE decodes greedily or by sampling, not {strategy!r}")
        state = torch.tanh(self.z_to_state(z)).unsqueeze(0).contiguous()
        token = torch.full((z.shape[0],), bos_id, dtype=torch.long)
        rows, done = [[] for _ in range(z.shape[0])], torch.zeros(z.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            x = (self.dec_embed(token) + self.z_to_input(z)).unsqueeze(1)
            out, state = self.dec_rnn(x, state)
            logits = self.out(out[:, 0])
            if strategy == "greedy":
                token = logits.argmax(-1)
            else:
                token = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator).squeeze(1)
            done |= token == eos_id
            for i in range(len(rows)):
                if not done[i]:
                    rows[i].append(int(token[i]))
            if bool(done.all()):
                break
        return rows


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return BUILTIN_CORPORA["grammar"](seed=3, n_train=96, n_valid=24, n_test=16)


FAST = dict(progress=False, verbose=False, iw_samples=3, eval_batch_size=32, batch_size=16, epochs=2)


def model_for(corpus, seed=0, **kwargs):
    torch.manual_seed(seed)
    return GRUVAE(len(corpus.vocab), **kwargs)


def test_the_user_model_implements_the_protocol_and_fastvae_models_do_too(corpus):
    model = model_for(corpus)
    assert isinstance(model, TextVAEModel) and isinstance(TextVAE(len(corpus.vocab), "tiny"), TextVAEModel)
    check_vae_model(model)
    check_vae_model(TextVAE(len(corpus.vocab), "tiny"))


@pytest.mark.parametrize("recipe,options", [("vae", {}), ("beta", {"beta": 0.5}), ("cyclical", {"cycles": 1}),
                                            ("aggressive", {"max_inner_steps": 3, "inner_window": 2}),
                                            ("pretrain-fb", {"target_kl": 1.0, "pretrain_epochs": 1})])
def test_every_recipe_trains_a_user_model(corpus, tmp_path, recipe, options):
    model = model_for(corpus)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, corpus, recipe=recipe, out_dir=str(tmp_path), **FAST, **options)
    test = trainer.fit()
    assert trainer.model is model and trainer.batch_size == 16
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("dec_rnn"))
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au"):
        assert key in test and test[key] == test[key], key  # present and not NaN
    if recipe == "pretrain-fb":
        assert model.resets == 1  # Li et al.'s decoder reset by default
    ckpt = read_checkpoint(str(tmp_path / "best.pt"))
    assert ckpt["model_config"] is None and ckpt["model_class"].endswith("GRUVAE") and ckpt["model_source"] is None
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_class"].endswith("GRUVAE")


def test_pretrain_fb_keeps_a_pretrained_decoder_and_says_when_it_cannot_reset(corpus):
    model = model_for(corpus)
    model.decoder_is_pretrained = True
    trainer = Trainer(model, corpus, recipe="pretrain-fb", **FAST, pretrain_epochs=1)
    assert trainer.recipe.phases[1].reset_decoder is False
    trainer.fit()
    assert model.resets == 0
    forced = Trainer(model_for(corpus), corpus, recipe="pretrain-fb", reset_decoder=True, **FAST)
    assert forced.recipe.phases[1].reset_decoder is True

    class NoReset(GRUVAE):
        reset_decoder_parameters = None

    with pytest.raises(ValueError, match="no reset_decoder_parameters.*reset_decoder=False"):
        Trainer(NoReset(len(corpus.vocab)), corpus, recipe="pretrain-fb", **FAST)
    kept = Trainer(NoReset(len(corpus.vocab)), corpus, recipe="pretrain-fb", reset_decoder=False, **FAST)
    assert kept.recipe.phases[1].reset_decoder is False
    assert resolve_reset_decoder(TextVAE(len(corpus.vocab), "tiny"), None) is True


def test_evaluation_generation_and_probes_take_a_user_model(corpus):
    from fastvae import evaluate
    from fastvae.evaluation.bleu import reconstruction_bleu
    from fastvae.generation import interpolate, reconstruct, sample_prior

    model = model_for(corpus).eval()
    result = evaluate(model, corpus.valid, batch_size=8, iw_samples=4, generator=torch.Generator().manual_seed(0))
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au"):
        assert torch.isfinite(torch.tensor(float(result[key]))), key
    assert result["nll"] <= result["elbo"] + 1e-4  # the IW bound is at least as tight as the ELBO (K >= 1)
    sentence = corpus.vocab.decode(corpus.valid.sentences[0].tolist())
    assert len(reconstruct(model, corpus.vocab, [sentence], max_len=8)) == 1
    assert len(sample_prior(model, corpus.vocab, 3, strategy="sample", max_len=8,
                            generator=torch.Generator().manual_seed(1))) == 3
    assert len(interpolate(model, corpus.vocab, sentence, sentence, steps=3, max_len=8)) == 3
    bleu = reconstruction_bleu(model, corpus.valid, corpus.vocab, strategies=("greedy",), max_len=8)
    assert set(bleu) == {"bleu_greedy_mean", "bleu_greedy_sample"}
    with pytest.raises(ValueError, match="GRUVAE decodes greedily or by sampling"):
        reconstruct(model, corpus.vocab, [sentence], strategy="beam")


def test_a_killed_user_model_run_resumes_exactly(corpus, tmp_path):
    common = dict(FAST, epochs=2, checkpoint_every=3)
    reference = Trainer(model_for(corpus), corpus, recipe="vae", out_dir=str(tmp_path / "a"), **common)
    reference.fit()
    killed = Trainer(model_for(corpus), corpus, recipe="vae", out_dir=str(tmp_path / "b"), **common)
    fit_until_killed(killed, 8)
    with pytest.raises(ValueError, match="cannot rebuild: pass the model"):
        Trainer.from_checkpoint(str(tmp_path / "b"), corpus)
    resumed = Trainer.from_checkpoint(str(tmp_path / "b"), corpus, model=model_for(corpus, seed=99))
    resumed.fit()
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.test_metrics == reference.test_metrics
    with pytest.raises(ValueError, match="was written by a run that trained a .*GRUVAE"):
        Trainer(TextVAE(len(corpus.vocab), "tiny"), corpus, recipe="vae", **FAST).fit(resume=str(tmp_path / "b"))

    with pytest.raises(ValueError, match="cannot rebuild: build the model and pass it"):
        load_model(str(tmp_path / "b" / "best.pt"))
    loaded, vocab, _ = load_model(str(tmp_path / "b" / "best.pt"), model=model_for(corpus, seed=5))
    assert not loaded.training and len(vocab) == len(corpus.vocab)
    best = read_checkpoint(str(tmp_path / "b" / "best.pt"))["model"]
    assert all(torch.equal(best[k], v) for k, v in loaded.state_dict().items())


class _Missing(nn.Module):
    latent_dim = 2

    def encode(self, tokens, lengths):
        return tokens.float(), tokens.float()


class _Overlapping(GRUVAE):
    def decoder_parameters(self):
        return [*super().decoder_parameters(), self.to_posterior.weight]


class _Uncovered(GRUVAE):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.extra = nn.Linear(2, 2)


@pytest.mark.parametrize("make,match", [
    (lambda v: _Missing(), r"missing: reconstruction: .*encoder_parameters: .*decoder_parameters"),
    (lambda v: _Overlapping(v), r"both in encoder_parameters\(\) and decoder_parameters\(\)"),
    (lambda v: _Uncovered(v), r"in neither .*: extra.weight, extra.bias"),
    (lambda v: object(), "must be a torch.nn.Module"),
])
def test_models_outside_the_protocol_are_refused_clearly(corpus, make, match):
    with pytest.raises(ValueError, match=match):
        Trainer(make(len(corpus.vocab)), corpus, recipe="vae", **FAST)


def test_a_zero_latent_dim_and_foreign_model_sources_are_refused(corpus):
    model = model_for(corpus)
    model.latent_dim = 0
    with pytest.raises(ValueError, match="latent_dim: the size of z"):
        check_vae_model(model)
    for source, match in (({"builder": "os:system", "arguments": {}}, "a callable of a fastvae module"),
                          ({"builder": "fastvae.models:TextVAE"}, "must be"),
                          ("fastvae.models:TextVAE", "must be")):
        with pytest.raises(ValueError, match=match):
            rebuild_from_source(source)
    rebuilt = rebuild_from_source({"builder": "fastvae.models:TextVAE",
                                   "arguments": {"vocab_size": 20, "config": "tiny"}})
    assert isinstance(rebuilt, TextVAE) and rebuilt.vocab_size == 20


def _user_model_worker(ctx, recipe):
    corpus = BUILTIN_CORPORA["grammar"](seed=3, n_train=96, n_valid=24, n_test=16)
    trainer = Trainer(model_for(corpus), corpus, recipe=recipe, distributed=ctx, **FAST, seed=4, pretrain_epochs=1)
    test = trainer.fit()
    return {"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, "test": test}


@pytest.mark.slow
def test_two_ranks_train_a_user_model_as_one_process(corpus):
    """torchrun: a user model's gradients are all-reduced and its decoder reset broadcast like fastvae's own."""
    from test_distributed import PARAM_TOL, run_ranks

    ranks = run_ranks(_user_model_worker, "pretrain-fb")
    single = _user_model_worker(None, "pretrain-fb")
    for rank in ranks:
        for name, value in single["params"].items():
            torch.testing.assert_close(rank["params"][name], value, **PARAM_TOL, msg=lambda m: f"{name}: {m}")
    assert ranks[0]["test"] == ranks[1]["test"]
    assert ranks[0]["test"]["au"] == single["test"]["au"]


def test_the_cli_trains_evaluates_decodes_and_resumes_a_user_model(corpus, tmp_path, monkeypatch, capsys):
    """`--model MODULE:CALLABLE`: the user's module from the current directory, for train, eval, generate and
    --resume; a run of a user model without it is a clear error."""
    import inspect

    from fastvae.cli import main
    from fastvae.data.builtin import write_corpus

    (tmp_path / "user_vae.py").write_text("import torch\nfrom torch import nn\n\nfrom fastvae.data import PAD\n\n\n"
                                          + inspect.getsource(GRUVAE))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "data"
    write_corpus(corpus, str(data))
    out = tmp_path / "run"
    common = ["--no-progress", "--json"]
    assert main(["train", "--model", "user_vae:GRUVAE", "--data", str(data), "--recipe", "vae", "--epochs", "1",
                 "--batch-size", "16", "--iw-samples", "2", "--examples", "0", "--out", str(out), *common]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["test"]["au"] >= 0 and read_checkpoint(str(out / "best.pt"))["model_class"].endswith("GRUVAE")
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--model", "user_vae:GRUVAE", "--data",
                 str(data / "test.txt"), "--iw-samples", "2", "--json"]) == 0
    assert "nll" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["generate", "--checkpoint", str(out / "best.pt"), "--model", "user_vae:GRUVAE", "--mode", "sample",
                 "--num", "2", "--json"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--model", "user_vae:GRUVAE", *common]) == 0
    capsys.readouterr()
    for argv, match in ((["eval", "--checkpoint", str(out / "best.pt"), "--data", str(data / "test.txt")],
                         "holds a user model .*GRUVAE.*give the --model"),
                        (["train", "--resume", str(out), *common], "is a run of a user model .*--model"),
                        (["train", "--model", "user_vae", "--data", str(data)], "must be MODULE:CALLABLE"),
                        (["train", "--model", "no_such_module:X", "--data", str(data)], "cannot import"),
                        (["train", "--model", "user_vae:Nothing", "--data", str(data)], "has no 'Nothing'"),
                        (["train", "--model", "user_vae:GRUVAE", "--config", "tiny", "--data", str(data)],
                         "leave out --config")):
        assert main(argv) != 0, argv
        assert re.search(match, capsys.readouterr().err), argv
