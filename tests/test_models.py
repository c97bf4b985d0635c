"""fastvae.models: configs, reference init, decoder re-initialisation, masking of padded batches."""
import pytest
import torch

from fastvae.data import grammar_corpus, make_batches
from fastvae.data.batching import collate
from fastvae.models import CONFIGS, LSTMLM, TextVAE, build_model, get_config


@pytest.fixture(scope="module")
def corpus():
    return grammar_corpus(seed=0, n_train=120, n_valid=10, n_test=10)


def test_configs_match_recipes():
    expect = {"ptb": (256, 256, 256, 32, 32), "yelp": (128, 512, 512, 32, 32), "yahoo": (512, 1024, 1024, 32, 32),
              "synthetic": (50, 50, 50, 2, 16)}
    for name, sizes in expect.items():
        c = get_config(name)
        assert (c.emb_dim, c.enc_hidden, c.dec_hidden, c.latent_dim, c.batch_size) == sizes
        assert (c.dropout_in, c.dropout_out) == (0.5, 0.5)
    assert "tiny" in CONFIGS
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("gan", 10, "tiny")


def test_reference_init_and_decoder_reinit(corpus):
    m = TextVAE(len(corpus.vocab), "tiny")
    for name, p in m.named_parameters():
        bound = 0.1 if "embed" in name else 0.01
        assert p.abs().max() <= bound, name
    enc = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in m.decoder.state_dict().items()}
    m.reset_decoder_parameters()
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in enc.items())
    assert all(not torch.equal(v, m.decoder.state_dict()[k]) for k, v in dec.items())
    n_enc = sum(p.numel() for p in m.encoder_parameters())
    n_dec = sum(p.numel() for p in m.decoder_parameters())
    assert n_enc + n_dec == sum(p.numel() for p in m.parameters())


def _batch_pair(dataset):
    """The same sentences as one padded batch and one batch per sentence."""
    rows = list(range(7))
    return collate(dataset, rows), [collate(dataset, [i]) for i in rows]


def test_padded_and_single_sentence_batches_agree(corpus):
    m = TextVAE(len(corpus.vocab), "tiny").eval()
    for p in m.parameters():  # larger weights so padding leaks would show
        torch.nn.init.uniform_(p, -0.3, 0.3)
    padded, singles = _batch_pair(corpus.train)
    assert (padded.lengths != padded.lengths[0]).any()
    mu, logvar = m.encode(padded.tokens, padded.lengths)
    z = torch.randn(7, 2, m.latent_dim)
    rec = m.reconstruction(padded.tokens, padded.lengths, z)
    assert rec.shape == (7, 2)
    for i, b in enumerate(singles):
        mu_i, logvar_i = m.encode(b.tokens, b.lengths)
        torch.testing.assert_close(mu[i], mu_i[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logvar[i], logvar_i[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rec[i], m.reconstruction(b.tokens, b.lengths, z[i:i + 1])[0], atol=1e-4, rtol=1e-5)


def test_bucketed_and_padded_batches_give_the_same_loss(corpus):
    m = TextVAE(len(corpus.vocab), "tiny").eval()
    for p in m.parameters():  # larger weights than the reference init, so a padding leak would show
        torch.nn.init.uniform_(p, -0.3, 0.3)
    total = {}
    for mode in ("bucket", "padded"):
        loss = torch.zeros(len(corpus.train), dtype=torch.float64)
        for b in make_batches(corpus.train, 16, mode=mode):
            mu, logvar = m.encode(b.tokens, b.lengths)
            rec = m.reconstruction(b.tokens, b.lengths, mu)
            loss[b.indices] = (rec + 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(1)).double()
        total[mode] = loss
    torch.testing.assert_close(total["bucket"], total["padded"], atol=1e-4, rtol=1e-5)
    lm = LSTMLM(len(corpus.vocab), "tiny").eval()
    lm_total = {}
    for mode in ("bucket", "padded"):
        lm_total[mode] = torch.zeros(len(corpus.train))
        for b in make_batches(corpus.train, 16, mode=mode):
            lm_total[mode][b.indices] = lm.nll(b.tokens, b.lengths)
    torch.testing.assert_close(lm_total["bucket"], lm_total["padded"], atol=1e-4, rtol=1e-5)


def test_lm_masks_padding(corpus):
    lm = LSTMLM(len(corpus.vocab), "tiny").eval()
    padded, singles = _batch_pair(corpus.train)
    nll = lm.nll(padded.tokens, padded.lengths)
    for i, b in enumerate(singles):
        torch.testing.assert_close(nll[i], lm.nll(b.tokens, b.lengths)[0], atol=1e-4, rtol=1e-5)
    lm.output.weight.data.zero_()  # uniform predictions: nll = (n + 1) log V exactly
    expected = (padded.lengths - 1).double() * torch.log(torch.tensor(float(len(corpus.vocab)), dtype=torch.float64))
    torch.testing.assert_close(lm.nll(padded.tokens, padded.lengths).double(), expected, rtol=1e-5, atol=1e-4)


def test_model_bad_inputs(corpus):
    m = TextVAE(len(corpus.vocab), "tiny")
    b = collate(corpus.train, [0, 1])
    with pytest.raises(ValueError, match="LongTensor"):
        m.encode(b.tokens.float(), b.lengths)
    with pytest.raises(ValueError, match="lengths must be"):
        m.encode(b.tokens, b.lengths[:1])
    with pytest.raises(ValueError, match="time >= 2"):
        m.encode(b.tokens[:, :1], b.lengths)
    with pytest.raises(ValueError, match="vocab_size"):
        TextVAE(3, "tiny")
