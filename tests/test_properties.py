"""Property-based tests (hypothesis): random bytes into the corpus reader, random shapes and values
into the functional API. The contract: either a result that keeps the documented invariants, or
one of the documented errors (ValueError/TypeError/FileNotFoundError) with a message that says
what was wrong; never another exception, never a hang (bounded examples, per-example deadline).
"""
import math
import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastvae import functional as F

PROPERTY = settings(max_examples=40, deadline=2000, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DOCUMENTED = (ValueError, TypeError)


# ----------------------------------------------------------------------------- corpus reader
_WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "<unk>", "N", "é", "日本", "\x00", "x" * 40]
_line = st.one_of(
    st.lists(st.sampled_from(_WORDS), min_size=0, max_size=12).map(" ".join),
    st.tuples(st.sampled_from(["0", "1", "pos", ""]), st.lists(st.sampled_from(_WORDS), max_size=8).map(" ".join))
    .map(lambda t: f"{t[0]}\t{t[1]}"),
    st.text(max_size=30),
)
_text_file = st.lists(_line, max_size=25).map(lambda lines: "\n".join(lines).encode("utf-8"))
_file_bytes = st.one_of(_text_file, st.binary(max_size=300),
                        st.tuples(_text_file, st.binary(min_size=1, max_size=8), _text_file)
                        .map(lambda t: t[0] + b"\n" + t[1] + b"\n" + t[2]))


def _check_corpus(corpus):
    from fastvae.data import BOS, EOS, PAD, UNK

    vocab = corpus.vocab
    assert vocab.itos[PAD] == "<pad>" and vocab.itos[BOS] == "<s>" and vocab.itos[EOS] == "</s>"
    assert vocab.itos[UNK] == "<unk>"
    assert len(vocab) == len(vocab.itos) == len(vocab.stoi)
    for split in ("train", "valid", "test"):
        dataset = getattr(corpus, split)
        for sentence in dataset.sentences:
            assert sentence.dim() == 1 and sentence.dtype == torch.long and sentence.numel() >= 1
            assert int(sentence.min()) >= 0 and int(sentence.max()) < len(vocab)
        if dataset.labels is not None:
            assert len(dataset.labels) == len(dataset)
        assert dataset.num_tokens() == sum(len(s) + 1 for s in dataset.sentences)


@PROPERTY
@given(train=_file_bytes, valid=_file_bytes, test=_file_bytes,
       max_len=st.one_of(st.none(), st.integers(1, 6)), max_vocab=st.one_of(st.none(), st.integers(1, 6)))
def test_corpus_reader_random_bytes(train, valid, test, max_len, max_vocab):
    from fastvae.data import load_corpus

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, data in (("train", train), ("valid", valid), ("test", test)):
            paths[name] = os.path.join(tmp, f"{name}.txt")
            with open(paths[name], "wb") as handle:
                handle.write(data)
        try:
            corpus = load_corpus(**paths, max_len=max_len, max_vocab=max_vocab)
        except ValueError as exc:  # documented: names the file that is wrong
            message = str(exc)
            assert any(os.path.basename(p) in message for p in paths.values()) or "vocab" in message, message
            return
        _check_corpus(corpus)
        if max_len is not None:
            for split in (corpus.train, corpus.valid, corpus.test):
                assert all(len(s) <= max_len for s in split.sentences)
        if max_vocab is not None:
            assert len(corpus.vocab) <= max_vocab + 4


@PROPERTY
@given(lines=st.lists(st.lists(st.sampled_from(_WORDS[:8]), min_size=1, max_size=7), min_size=1, max_size=20),
       batch_size=st.integers(1, 6), mode=st.sampled_from(["bucket", "padded"]), seed=st.integers(0, 2 ** 31))
def test_corpus_round_trip_and_batches(lines, batch_size, mode, seed):
    """Clean text: every line comes back as its tokens; every sentence lands in exactly one batch."""
    from fastvae.data import BOS, EOS, PAD, load_corpus, make_batches

    with tempfile.TemporaryDirectory() as tmp:
        text = "\n".join(" ".join(words) for words in lines) + "\n"
        for name in ("train", "valid", "test"):
            with open(os.path.join(tmp, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.write(text)
        corpus = load_corpus(tmp)
    _check_corpus(corpus)
    decoded = [corpus.vocab.decode(s.tolist()).split() for s in corpus.train.sentences]
    assert decoded == lines
    gen = torch.Generator().manual_seed(seed)
    batches = make_batches(corpus.train, batch_size, mode=mode, shuffle=True, generator=gen)
    seen = []
    for batch in batches:
        assert batch.tokens.shape[0] <= batch_size
        for row, length in zip(batch.tokens, batch.lengths.tolist()):
            assert row[0] == BOS and row[length - 1] == EOS and bool((row[length:] == PAD).all())
            seen.append(tuple(row[1:length - 1].tolist()))
        if mode == "bucket":
            assert len(set(batch.lengths.tolist())) == 1
    assert sorted(seen) == sorted(tuple(s.tolist()) for s in corpus.train.sentences)


def test_corpus_reader_missing_file_and_empty_split(tmp_path):
    from fastvae.data import load_corpus

    (tmp_path / "train.txt").write_text("a b c\n")
    (tmp_path / "valid.txt").write_text("\n\n")
    (tmp_path / "test.txt").write_text("a\n")
    with pytest.raises((ValueError, FileNotFoundError), match="valid"):
        load_corpus(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match="nothere"):
        load_corpus(train=str(tmp_path / "nothere.txt"), valid=str(tmp_path / "test.txt"),
                    test=str(tmp_path / "test.txt"))


# ----------------------------------------------------------------------------- functional API
@st.composite
def posteriors(draw, max_rows=7, max_dims=6, lo=-30.0, hi=30.0):
    rows = draw(st.integers(1, max_rows))
    dims = draw(st.integers(1, max_dims))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    values = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)
    mu = torch.tensor(draw(st.lists(values, min_size=rows * dims, max_size=rows * dims)), dtype=dtype)
    logvar = torch.tensor(draw(st.lists(st.floats(-20.0, 20.0, width=32), min_size=rows * dims,
                                        max_size=rows * dims)), dtype=dtype)
    return mu.view(rows, dims), logvar.view(rows, dims)


@PROPERTY
@given(post=posteriors(), mode=st.sampled_from(F.FREE_BITS_MODES), target=st.floats(0.01, 50.0),
       nsamples=st.integers(1, 4), seed=st.integers(0, 2 ** 31))
def test_functional_random_values(post, mode, target, nsamples, seed):
    mu, logvar = post
    rows, dims = mu.shape
    kl = F.kl_per_dim(mu, logvar)
    assert kl.shape == (rows, dims) and kl.dtype == mu.dtype
    assert bool((kl >= -1e-4 * (1 + kl.abs())).all()) or not bool(torch.isfinite(kl).all())
    plain = F.free_bits_kl(mu, logvar, 0.0, "none")
    target = 0.0 if mode == "none" else target
    fb = F.free_bits_kl(mu, logvar, target, mode)
    assert fb.dim() == 0
    kl64 = kl.double()
    if bool(torch.isfinite(kl64).all()):
        torch.testing.assert_close(plain.double(), kl64.sum(1).mean(), rtol=1e-4, atol=1e-4)
        if mode in ("sentence", "dim", "batch"):  # masks only remove KL
            assert float(fb) <= float(plain) * (1 + 1e-5) + 1e-5
    gen = torch.Generator().manual_seed(seed)
    z, kl_loss, kl_mean = F.sample_and_kl(mu, logvar, nsamples, target, mode, generator=gen)
    assert z.shape == ((rows, dims) if nsamples == 1 else (rows, nsamples, dims))
    assert kl_mean.shape == (dims,) and kl_loss.dim() == 0
    if bool(torch.isfinite(fb)):
        torch.testing.assert_close(kl_loss.double(), fb.double(), rtol=1e-4, atol=1e-4)
    again = F.reparameterize(mu, logvar, nsamples, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(again, z, rtol=0, atol=0, equal_nan=True)
    logp = F.gaussian_log_prob(z, mu, logvar)
    assert logp.shape == ((rows,) if nsamples == 1 else (rows, nsamples))
    assert F.standard_normal_log_prob(z).shape == logp.shape
    mi = F.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(seed))
    assert mi.dim() == 0
    mi_batch = F.mutual_information(mu, logvar, batch_size=max(1, rows // 2), generator=gen)
    assert mi_batch.dim() == 0
    if rows >= 2:
        count, var = F.active_units(mu)
        assert 0 <= count <= dims and var.shape == (dims,) and bool((var >= 0).all())


@PROPERTY
@given(rows=st.integers(1, 5), dims=st.integers(1, 5),
       special=st.sampled_from([math.nan, math.inf, -math.inf]), where=st.integers(0, 24))
def test_functional_non_finite_inputs_propagate(rows, dims, special, where):
    """NaN/inf in mu or logvar: no exception; NaN never turns into a finite-looking 0 loss."""
    mu, logvar = torch.randn(rows, dims), torch.randn(rows, dims)
    target = mu if where % 2 else logvar
    target.view(-1)[where % (rows * dims)] = special
    kl = F.kl_per_dim(mu, logvar)
    for mode in F.FREE_BITS_MODES:
        value = F.free_bits_kl(mu, logvar, 0.0 if mode == "none" else 1.0, mode)
        if math.isnan(special) and mode == "none":
            assert math.isnan(float(value))
    assert not bool(torch.isfinite(kl).all())
    F.sample_and_kl(mu, logvar)
    F.mutual_information(mu, logvar)


_BAD_CALLS = {
    "shape mismatch": lambda: F.kl_per_dim(torch.zeros(2, 3), torch.zeros(3, 2)),
    "1-d input": lambda: F.free_bits_kl(torch.zeros(3), torch.zeros(3)),
    "integer dtype": lambda: F.reparameterize(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)),
    "dtype mismatch": lambda: F.sample_and_kl(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)),
    "empty": lambda: F.kl_per_dim(torch.zeros(0, 3), torch.zeros(0, 3)),
    "not a tensor": lambda: F.kl_per_dim([[0.0]], [[0.0]]),
    "unknown mode": lambda: F.free_bits_kl(torch.zeros(2, 2), torch.zeros(2, 2), 1.0, "bogus"),
    "negative target": lambda: F.free_bits_kl(torch.zeros(2, 2), torch.zeros(2, 2), -1.0, "dim"),
    "nan target": lambda: F.free_bits_kl(torch.zeros(2, 2), torch.zeros(2, 2), math.nan, "dim"),
    "zero samples": lambda: F.sample_and_kl(torch.zeros(2, 2), torch.zeros(2, 2), 0),
    "bool samples": lambda: F.reparameterize(torch.zeros(2, 2), torch.zeros(2, 2), True),
    "bad generator": lambda: F.reparameterize(torch.zeros(2, 2), torch.zeros(2, 2), generator=3),
    "z shape": lambda: F.gaussian_log_prob(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3)),
    "mi batch size": lambda: F.mutual_information(torch.zeros(2, 2), torch.zeros(2, 2), batch_size=0),
    "au one row": lambda: F.active_units(torch.zeros(1, 3)),
    "au threshold": lambda: F.active_units(torch.zeros(3, 3), threshold=-1.0),
    # tensors on mixed devices ("meta" stands in for a second device on a CPU-only machine)
    "mixed devices": lambda: F.kl_per_dim(torch.zeros(2, 2), torch.zeros(2, 2, device="meta")),
    "mixed devices z": lambda: F.gaussian_log_prob(torch.zeros(2, 2, device="meta"), torch.zeros(2, 2),
                                                   torch.zeros(2, 2)),
    "mixed devices mi": lambda: F.mutual_information(torch.zeros(2, 2), torch.zeros(2, 2),
                                                     z=torch.zeros(2, 2, device="meta")),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_functional_bad_inputs_are_clear_errors(case):
    with pytest.raises(DOCUMENTED) as info:
        _BAD_CALLS[case]()
    message = str(info.value)
    assert len(message) > 20, message  # says what was wrong, not a bare "invalid"
    if "devices" in case:
        assert "device" in message


@PROPERTY
@given(value=st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5), st.none(),
                       st.booleans()),
       which=st.sampled_from(["nsamples", "target", "mode", "batch_size", "threshold"]))
def test_functional_random_arguments(value, which):
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    calls = {
        "nsamples": lambda: F.sample_and_kl(mu, logvar, value),
        "target": lambda: F.free_bits_kl(mu, logvar, value, "dim"),
        "mode": lambda: F.free_bits_kl(mu, logvar, 1.0, value),
        "batch_size": lambda: F.mutual_information(mu, logvar, batch_size=value),
        "threshold": lambda: F.active_units(mu, threshold=value),
    }
    try:
        out = calls[which]()
    except DOCUMENTED:
        return
    # accepted: the value was a valid one, so the result is well formed
    result = out[0] if isinstance(out, tuple) else out
    assert torch.is_tensor(result) or isinstance(result, int)


@PROPERTY
@given(post=posteriors(max_rows=6, lo=-5.0, hi=5.0), mode=st.sampled_from(F.FREE_BITS_MODES),
       nsamples=st.integers(1, 3), seed=st.integers(0, 2 ** 31), cut=st.integers(0, 6))
def test_sample_and_kl_with_given_noise(post, mode, nsamples, seed, cut):
    """eps= gives what the generator's draw gives, and rows of one draw are the rows' own samples
    (how data-parallel ranks share the global batch's noise)."""
    mu, logvar = post
    target = 0.0 if mode == "none" else 1.0
    drawn = F.sample_and_kl(mu, logvar, nsamples, target, mode, generator=torch.Generator().manual_seed(seed))
    dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    eps = torch.randn((mu.shape[0], nsamples, mu.shape[1]), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    given_noise = F.sample_and_kl(mu, logvar, nsamples, target, mode, eps=eps)
    for a, b in zip(drawn, given_noise):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    rows = slice(0, min(cut, mu.shape[0]) or 1)
    part = F.sample_and_kl(mu[rows], logvar[rows], nsamples, target, mode, eps=eps[rows])
    torch.testing.assert_close(part[0], drawn[0][rows], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="eps must have shape"):
        F.sample_and_kl(mu, logvar, nsamples + 1, target, mode, eps=eps)
