"""fastvae.evaluation on hand-built models where the answer is known."""
import math

import pytest
import torch

from fastvae import functional as F
from fastvae.data import grammar_corpus
from fastvae.data import TextDataset
from fastvae.data.batching import bucket_groups
from fastvae.evaluation import evaluate, iw_nll, linear_probe_accuracy, per_batch_mutual_information, posterior_stats
from fastvae.models import LSTMLM, TextVAE


@pytest.fixture(scope="module")
def corpus():
    return grammar_corpus(seed=1, n_train=100, n_valid=40, n_test=40)


def latent_free_vae(vocab_size):
    """A VAE whose decoder ignores z and whose posterior is the prior: log p(x) is exact and equals -rec."""
    m = TextVAE(vocab_size, "tiny").eval()
    for p in m.parameters():
        torch.nn.init.uniform_(p, -0.2, 0.2)
    with torch.no_grad():
        m.encoder.to_posterior.weight.zero_()
        m.decoder.latent_to_cell.weight.zero_()
        m.decoder.weight_ih_l0[:, m.decoder.emb_dim:] = 0
    return m


def test_iw_nll_equals_exact_likelihood_when_z_is_ignored(corpus):
    m = latent_free_vae(len(corpus.vocab))
    nll = iw_nll(m, corpus.valid, K=7, batch_size=16)
    nll_one_sample = iw_nll(m, corpus.valid, K=1, batch_size=16)  # K=1 keeps its samples axis
    mu, _ = posterior_stats(m, corpus.valid)
    exact = torch.stack([m.reconstruction(*_one(corpus.valid, i), torch.zeros(1, m.latent_dim))[0]
                         for i in range(len(corpus.valid))]).double()
    torch.testing.assert_close(nll, exact, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(nll_one_sample, exact, atol=1e-3, rtol=1e-5)
    r = evaluate(m, corpus.valid, iw_samples=5)
    assert r["kl"] == pytest.approx(0.0, abs=1e-9) and r["au"] == 0
    assert r["nll"] == pytest.approx(r["elbo"], rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(exact.sum().item() / corpus.valid.num_tokens()), rel=1e-5)


def _one(dataset, i):
    from fastvae.data.batching import collate

    b = collate(dataset, [i])
    return b.tokens, b.lengths


def test_uniform_decoder_gives_ppl_equal_vocab_size(corpus):
    m = latent_free_vae(len(corpus.vocab))
    with torch.no_grad():
        m.decoder.output.weight.zero_()
    r = evaluate(m, corpus.valid, iw_samples=3, metrics=["nll", "ppl"])
    assert r["ppl"] == pytest.approx(len(corpus.vocab), rel=1e-4)
    lm = LSTMLM(len(corpus.vocab), "tiny")
    lm.output.weight.data.zero_()
    r = evaluate(lm, corpus.valid)
    assert set(r) == {"nll", "ppl", "num_sentences", "num_tokens"}
    assert r["ppl"] == pytest.approx(len(corpus.vocab), rel=1e-4)


def test_iw_bound_is_tighter_than_elbo(corpus):
    m = TextVAE(len(corpus.vocab), "tiny").eval()
    for p in m.parameters():
        torch.nn.init.uniform_(p, -0.3, 0.3)
    gen = torch.Generator().manual_seed(0)
    iw = iw_nll(m, corpus.valid, K=200, generator=gen).mean().item()
    # The ELBO's expectation, estimated with many samples: E_q[rec] + KL.
    mu, logvar = posterior_stats(m, corpus.valid)
    from fastvae.data.batching import collate
    b = collate(corpus.valid, list(range(len(corpus.valid))))
    with torch.no_grad():
        z = F.reparameterize(mu, logvar, nsamples=200, generator=gen)
        elbo = (m.reconstruction(b.tokens, b.lengths, z).mean(1) + F.kl_per_dim(mu, logvar).sum(1)).mean().item()
    assert iw <= elbo + 1e-3
    assert iw > 0


def test_evaluate_reports_every_metric_and_restores_mode(corpus):
    m = TextVAE(len(corpus.vocab), "tiny").train()
    r = evaluate(m, corpus.valid, iw_samples=4, batch_size=8, mi_batch_size=8)
    for key in ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au", "au_var", "probe_acc"):
        assert key in r, key
    assert m.training
    assert r["elbo"] == pytest.approx(r["rec"] + r["kl"])
    assert r["mi"] <= math.log(len(corpus.valid)) + 1e-6 and r["mi_batch"] <= math.log(8) + 1e-6
    assert len(r["au_var"]) == m.latent_dim
    r0 = evaluate(m, corpus.valid, iw_samples=0, metrics=["rec", "kl", "nll", "ppl"])
    assert "nll" not in r0 and r0["ppl_from"] == "elbo"
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(m, corpus.valid, metrics=["bleu"])
    with pytest.raises(ValueError, match="iw_samples"):
        evaluate(m, corpus.valid, iw_samples=-1)
    with pytest.raises(TypeError, match="TextDataset"):
        evaluate(m, [1, 2, 3])


def test_au_counts_dimensions_with_variance(corpus):
    m = TextVAE(len(corpus.vocab), "tiny").eval()
    with torch.no_grad():
        m.encoder.to_posterior.weight.zero_()
        m.encoder.to_posterior.weight[0, :] = 5.0  # only mu_0 varies across sentences
        for p in m.encoder.lstm.parameters():
            torch.nn.init.uniform_(p, -1, 1)
    mu, _ = posterior_stats(m, corpus.valid)
    assert mu[:, 0].var() >= 0.01
    assert evaluate(m, corpus.valid, iw_samples=0, metrics=["au"])["au"] == 1


def test_linear_probe():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    separable = torch.randn(400, 3, generator=g) + 4 * labels.unsqueeze(1).float()
    assert linear_probe_accuracy(separable, labels) > 0.95
    noise = torch.randn(400, 3, generator=g)
    assert linear_probe_accuracy(noise, labels) < 0.75
    with pytest.raises(ValueError, match="too few"):
        linear_probe_accuracy(torch.randn(2, 2), torch.tensor([0, 1]))


def test_iw_nll_matches_quadrature_when_z_matters(corpus):
    """nz = 1: log p(x) = log int p(x|z) N(z; 0, 1) dz is computable on a grid, with a decoder that uses z and
    a proposal q(z|x) that is not the prior. The IW estimate must agree within its own standard error, which
    the grid also gives: Var_q[w] / p(x)^2 = int (p(x|z) N(z))^2 / q(z) dz / p(x)^2 - 1."""
    from fastvae.data.batching import collate
    from fastvae.models import ModelConfig

    data = corpus.valid.subset(range(6))
    b = collate(data, range(len(data)))
    grid = torch.linspace(-9.0, 9.0, 1801)
    dz = float(grid[1] - grid[0])
    # a random model whose decoder depends on z by more than half a nat on every sentence (redrawn until it
    # does: about one random draw in three does not)
    for _ in range(50):
        m = TextVAE(len(corpus.vocab), ModelConfig("quad", 16, 16, 16, 1, 8)).eval()
        for p in m.parameters():
            torch.nn.init.uniform_(p, -0.3, 0.3)
        with torch.no_grad():
            m.decoder.latent_to_cell.weight.uniform_(-1.0, 1.0)      # z moves the decoder by a few nats
            m.encoder.to_posterior.weight[0].uniform_(-0.1, 0.1)    # mu(x) in (-1.6, 1.6)
            m.encoder.to_posterior.weight[1].uniform_(-0.02, 0.02)  # var(x) in about (0.7, 1.4): bounded weights
            log_px_z = -m.reconstruction(b.tokens, b.lengths, grid.view(1, -1, 1).expand(len(data), -1, 1))  # [B, G]
        if (log_px_z.max(1).values - log_px_z.min(1).values).min() > 0.5:
            break
    with torch.no_grad():
        mu, logvar = m.encode(b.tokens, b.lengths)
        log_prior = -0.5 * grid.square() - 0.5 * math.log(2 * math.pi)
        log_joint = (log_px_z + log_prior).double()
        exact = torch.logsumexp(log_joint, 1) + math.log(dz)                                             # log p(x)
        log_q = F.gaussian_log_prob(grid.view(1, -1, 1).expand(len(data), -1, 1), mu, logvar).double()
        rel_var = (torch.logsumexp(2 * log_joint - log_q, 1) + math.log(dz) - 2 * exact).exp() - 1
    assert (log_px_z.max(1).values - log_px_z.min(1).values).min() > 0.5, "the test needs a decoder that uses z"
    K = 2000
    nll = iw_nll(m, data, K=K, batch_size=4, batch_mode="padded")
    # -log of a mean of K weights: delta-method standard error sqrt(rel_var / K), bias rel_var / (2K).
    tol = 6 * (rel_var / K).sqrt() + rel_var / K + 1e-3
    assert ((nll + exact).abs() <= tol).all(), (nll, -exact, tol)


def test_vocabulary_and_device_mismatch_are_clear_errors(corpus):
    small = TextVAE(10, "tiny")
    with pytest.raises(ValueError, match="different vocabulary"):
        evaluate(small, corpus.valid, iw_samples=2)
    with pytest.raises(ValueError, match="different vocabulary"):
        iw_nll(small, corpus.valid, K=2)
    m = TextVAE(len(corpus.vocab), "tiny")
    with pytest.raises(ValueError, match="model's device"):
        evaluate(m, corpus.valid, device="meta")


def test_bucket_and_padded_evaluation_agree(corpus):
    """The deterministic metrics do not depend on the batching; IW-NLL agrees when q is the prior and z is unused."""
    m = latent_free_vae(len(corpus.vocab))
    with torch.no_grad():
        m.encoder.to_posterior.weight.uniform_(-0.5, 0.5)  # a posterior that varies, so kl and au are not trivial
        m.decoder.latent_to_cell.weight.zero_()
    r = {mode: evaluate(m, corpus.valid, iw_samples=0, metrics=["kl", "au"], batch_size=8, batch_mode=mode)
         for mode in ("bucket", "padded")}
    assert r["bucket"]["kl"] == pytest.approx(r["padded"]["kl"], rel=1e-5)
    assert r["bucket"]["au"] == r["padded"]["au"]
    assert r["bucket"]["au_var"] == pytest.approx(r["padded"]["au_var"], rel=1e-4, abs=1e-7)
    with torch.no_grad():
        m.encoder.to_posterior.weight.zero_()  # q = prior: with a z-free decoder every importance weight is p(x)
    nll = {mode: iw_nll(m, corpus.valid, K=3, batch_size=8, batch_mode=mode) for mode in ("bucket", "padded")}
    torch.testing.assert_close(nll["bucket"], nll["padded"], atol=1e-4, rtol=1e-5)


def test_single_sentence_evaluation(corpus):
    m = TextVAE(len(corpus.vocab), "tiny")
    one = corpus.valid.subset([0])
    r = evaluate(m, one, iw_samples=3)
    assert r["num_sentences"] == 1 and "au" not in r and "nll" in r and "mi" in r
    with pytest.raises(ValueError, match="at least 2 sentences"):
        evaluate(m, one, iw_samples=3, metrics=["au"])


def test_rank_aware_evaluate_without_ranks_is_the_single_process_one(corpus):
    """`evaluate(..., distributed=ctx)` with a single-process context (and its old name, `distributed_evaluate`)
    is the plain evaluator: the same dict, bitwise, for every metric selection and for a language model."""
    from fastvae.training.distributed import SINGLE, distributed_evaluate

    vae = TextVAE(len(corpus.vocab), "tiny")
    lm = LSTMLM(len(corpus.vocab), "tiny")
    cases = [(vae, None, 3), (vae, ["rec", "kl", "elbo", "mi", "mi_batch", "au"], 3), (vae, ["ppl"], 3),
             (vae, None, 0), (lm, None, 3), (lm, ["ppl"], 3)]
    for model, metrics, iw_samples in cases:
        def run(**how):
            return evaluate(model, corpus.valid, batch_size=8, iw_samples=iw_samples, metrics=metrics,
                            generator=torch.Generator().manual_seed(5), **how)

        plain = run()
        assert run(distributed=SINGLE) == plain, metrics
        assert distributed_evaluate(model, corpus.valid, SINGLE, batch_size=8, iw_samples=iw_samples,
                                    metrics=metrics, generator=torch.Generator().manual_seed(5)) == plain, metrics


def test_metric_lists_are_defined_once():
    """No module but fastvae/evaluation/metrics.py spells out the VAE metric list or the whole-set metrics (the
    rank-aware path used to carry its own copies)."""
    import ast
    import pathlib

    import fastvae
    from fastvae.evaluation.metrics import VAE_METRICS, WHOLE_SET_METRICS

    root = pathlib.Path(fastvae.__file__).parent
    found = {VAE_METRICS: [], WHOLE_SET_METRICS: []}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts \
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                names = {e.value for e in node.elts}
                for listed in found:
                    if names == set(listed):
                        found[listed].append(path.relative_to(root).as_posix())
    assert found == {VAE_METRICS: ["evaluation/metrics.py"], WHOLE_SET_METRICS: ["evaluation/metrics.py"]}


# ------------------------------------------------------------------ per-batch MI (He et al.'s calc_mi)
def he_et_al_calc_mi(mu, logvar, z, lengths, batch_size):
    """A reading of He et al.'s `calc_mi` + `calc_mi_q` in float64: validation batches of equal-length
    sentences (their `create_data_batch`), the batch as the aggregate posterior, values weighted by batch size."""
    by_length = {}
    for row in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        by_length.setdefault(lengths[row], []).append(row)
    mi, count = 0.0, 0
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            b = torch.tensor(rows[start:start + batch_size])
            m, lv, zz = mu[b].double(), logvar[b].double(), z[b].double()
            nz = m.shape[1]
            neg_entropy = (-0.5 * nz * math.log(2 * math.pi) - 0.5 * (1 + lv).sum(-1)).mean()
            dev = zz.unsqueeze(1) - m.unsqueeze(0)
            log_density = -0.5 * (dev ** 2 / lv.exp().unsqueeze(0)).sum(-1) \
                - 0.5 * (nz * math.log(2 * math.pi) + lv.sum(-1).unsqueeze(0))
            log_qz = torch.logsumexp(log_density, dim=1) - math.log(len(b))
            mi += float(neg_entropy - log_qz.mean()) * len(b)
            count += len(b)
    return mi / count


@pytest.mark.parametrize("batch_size", [1, 3, 32, 500])
def test_per_batch_mi_matches_he_et_al(batch_size, fresh_seed):
    gen = torch.Generator().manual_seed(fresh_seed)
    n, nz = 157, 5
    lengths = torch.randint(3, 9, (n,), generator=gen).tolist()
    mu = torch.randn(n, nz, generator=gen) * 2
    logvar = torch.randn(n, nz, generator=gen) - 1
    got = per_batch_mutual_information(mu, logvar, lengths, batch_size, generator=torch.Generator().manual_seed(5))
    z = F.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(he_et_al_calc_mi(mu, logvar, z, lengths, batch_size), rel=1e-5, abs=1e-5)
    groups = bucket_groups(lengths, batch_size)
    assert sorted(i for g in groups for i in g) == list(range(n))
    assert all(len({lengths[i] for i in g}) == 1 and len(g) <= batch_size for g in groups)


def test_per_batch_mi_bad_inputs():
    mu = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="mi_batch_size must be a positive int"):
        per_batch_mutual_information(mu, mu, [3] * 4, 0)
    with pytest.raises(ValueError, match="one row per length"):
        per_batch_mutual_information(mu, mu, [3] * 5, 32)
    with pytest.raises(ValueError, match="mi_batch_size"):
        evaluate(latent_free_vae(20), TextDataset([torch.tensor([4, 5])] * 3), mi_batch_size=True)


class SeparatedPosteriors(torch.nn.Module):
    """A VAE-shaped model whose posteriors are points far apart (mu = 100 x the sentence's first word, std
    1e-3, one latent dimension): any batch of B distinct sentences has MI ~= log B, so the estimate shows the
    batch it was formed over. The decoder is a constant (reconstruction 0)."""

    latent_dim = 1

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def encode(self, tokens, lengths):
        mu = 100.0 * tokens[:, 1:2].float()
        return mu, torch.full_like(mu, math.log(1e-6))

    def reconstruction(self, tokens, lengths, z):
        return torch.zeros(z.shape[:-1])


def test_mi_batch_is_over_batches_of_32_whatever_the_evaluation_batch():
    # 130 distinct sentences of one length: reference batches of 32, 32, 32, 32, 2
    data = TextDataset([torch.tensor([4 + i, 5, 6]) for i in range(130)], name="separated")
    expected_32 = (4 * 32 * math.log(32) + 2 * math.log(2)) / 130
    expected_64 = (2 * 64 * math.log(64) + 2 * math.log(2)) / 130
    model = SeparatedPosteriors()
    for eval_batch in (8, 64, 130):
        r = evaluate(model, data, batch_size=eval_batch, iw_samples=2, metrics=["mi_batch", "mi"],
                     generator=torch.Generator().manual_seed(eval_batch))
        # noise of the one-sample estimate: 0.5 * sqrt(2 / 130) ~= 0.06 nats
        assert r["mi_batch"] == pytest.approx(expected_32, abs=0.3), eval_batch
        assert r["mi_batch"] <= math.log(32) + 0.3 and r["mi"] == pytest.approx(math.log(130), abs=0.3)
        wide = evaluate(model, data, batch_size=eval_batch, iw_samples=2, metrics=["mi_batch"], mi_batch_size=64,
                        generator=torch.Generator().manual_seed(eval_batch))
        assert wide["mi_batch"] == pytest.approx(expected_64, abs=0.3), eval_batch
