"""fastvae.data: vocabulary, corpus reader and its errors, batching, built-in corpora."""
import os

import pytest
import torch

from fastvae.data import (BOS, EOS, PAD, UNK, Batch, CorpusError, Vocab, grammar_corpus, load_corpus, make_batches,
                          read_dataset, synthetic_corpus, write_corpus)


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


@pytest.fixture
def corpus_dir(tmp_path):
    write(tmp_path / "train.txt", "the cat sat\n\nthe dog sat down\n  \na cat\n")
    write(tmp_path / "valid.txt", "the bird sat\n")
    write(tmp_path / "test.txt", "a dog\nthe cat\n")
    return tmp_path


def test_vocab_specials_order_and_oov():
    v = Vocab.build([["b", "a", "b"], ["c", "a", "b"]])
    assert v.itos[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert v.itos[4:] == ["b", "a", "c"]  # by frequency, ties alphabetical
    assert v.encode(["a", "zzz"]) == [v.stoi["a"], UNK]
    assert v.decode([BOS, v.stoi["b"], v.stoi["a"], EOS, v.stoi["c"]]) == "b a"
    assert Vocab.from_dict(v.to_dict()) == v
    assert Vocab.build([["a", "a", "b"]], min_count=2).itos[4:] == ["a"]
    assert Vocab.build([["a", "a", "b", "c"]], max_size=1).itos[4:] == ["a"]
    assert "<unk>" not in Vocab.build([["<unk>", "x"]]).itos[4:]


def test_vocab_errors():
    with pytest.raises(ValueError, match="first four tokens"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Vocab.build([["a"]]).decode([99])
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build([["a"]], min_count=0)
    with pytest.raises(ValueError, match="itos"):
        Vocab.from_dict({"words": []})


def test_load_corpus_directory(corpus_dir):
    c = load_corpus(str(corpus_dir))
    assert len(c.train) == 3 and len(c.valid) == 1 and len(c.test) == 2
    assert c.stats["train"]["empty_lines"] == 2
    assert c.vocab.itos[4:6] == ["cat", "sat"]  # frequency 2 each, alphabetical
    assert "bird" not in c.vocab.stoi and int(c.valid.sentences[0][1]) == UNK
    assert c.stats["valid"]["unk_tokens"] == 1
    assert c.train.num_tokens() == (3 + 1) + (4 + 1) + (2 + 1)
    assert c.train.labels is None


def test_load_corpus_labels_and_truncation(tmp_path):
    files = {s: write(tmp_path / f"{s}.tsv", "1\tgood food here\n0\tbad food\n10\tok\n")
             for s in ("train", "valid", "test")}
    c = load_corpus(**files, max_len=2)
    assert c.label_names == ["0", "1", "10"]
    assert c.train.labels.tolist() == [1, 0, 2]
    assert c.stats["train"]["truncated_lines"] == 1 and len(c.train.sentences[0]) == 2


@pytest.mark.parametrize("content,message", [
    (b"", "no sentences"),
    (b"\n \n\t\n", "empty label|no sentences"),
    (b"ok line\n\xff\xfe bad\n", ":2: not valid UTF-8"),
    (b"1\tgood\nno label\n", "either all or none"),
])
def test_reader_errors_name_file_and_line(tmp_path, content, message):
    bad = write(tmp_path / "train.txt", content, "wb")
    good = write(tmp_path / "ok.txt", "a b\n")
    with pytest.raises(CorpusError, match=message) as err:
        load_corpus(train=bad, valid=good, test=good)
    assert "train.txt" in str(err.value)


def test_corpus_errors(tmp_path, corpus_dir):
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(train=str(tmp_path / "nope.txt"), valid=str(tmp_path / "nope.txt"), test=str(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match="missing test.txt"):
        os.remove(corpus_dir / "test.txt")
        load_corpus(str(corpus_dir))
    write(corpus_dir / "test.txt", "\n\n")
    with pytest.raises(CorpusError, match="test.txt: no sentences"):
        load_corpus(str(corpus_dir))
    with pytest.raises(ValueError, match="not both"):
        load_corpus(str(corpus_dir), train="x")
    with pytest.raises(ValueError, match="missing: valid, test"):
        load_corpus(train="x")
    with pytest.raises(CorpusError, match="no such directory"):
        load_corpus(str(tmp_path / "nodir"))
    with pytest.raises(ValueError, match="max_len"):
        load_corpus(train=str(corpus_dir / "train.txt"), valid="v", test="t", max_len=0)


def test_unknown_label_in_valid(tmp_path):
    tr = write(tmp_path / "t.txt", "0\ta\n1\tb\n")
    va = write(tmp_path / "v.txt", "2\ta\n")
    with pytest.raises(CorpusError, match="do not occur in the training split"):
        load_corpus(train=tr, valid=va, test=tr)


def test_read_dataset_with_existing_vocab(corpus_dir):
    c = load_corpus(str(corpus_dir))
    ds = read_dataset(str(corpus_dir / "valid.txt"), c.vocab)
    assert torch.equal(ds.sentences[0], c.valid.sentences[0])


def _all_rows(batches):
    return sorted(int(i) for b in batches for i in b.indices)


@pytest.mark.parametrize("mode", ["bucket", "padded"])
def test_batches_cover_every_sentence_once_and_are_deterministic(mode):
    c = grammar_corpus(seed=3, n_train=203, n_valid=5, n_test=5)
    batches = make_batches(c.train, 16, mode=mode, generator=torch.Generator().manual_seed(1))
    assert _all_rows(batches) == list(range(203))
    again = make_batches(c.train, 16, mode=mode, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(batches, again))
    for b in batches:
        assert isinstance(b, Batch) and b.size <= 16
        assert (b.tokens[:, 0] == BOS).all()
        assert (b.tokens.gather(1, (b.lengths - 1).unsqueeze(1)) == EOS).all()
        assert b.num_target_tokens == int((b.lengths - 1).sum())
        for row, i in enumerate(b.indices.tolist()):
            n = len(c.train.sentences[i])
            assert torch.equal(b.tokens[row, 1:n + 1], c.train.sentences[i])
            assert (b.tokens[row, n + 2:] == PAD).all()
        if mode == "bucket":
            assert (b.lengths == b.lengths[0]).all() and b.tokens.shape[1] == int(b.lengths[0])
        assert torch.equal(b.labels, c.train.labels[b.indices])


def test_batches_drop_last_and_errors():
    c = grammar_corpus(seed=0, n_train=50, n_valid=5, n_test=5)
    assert all(b.size == 8 for b in make_batches(c.train, 8, mode="padded", drop_last=True))
    with pytest.raises(ValueError, match="unknown batch mode"):
        make_batches(c.train, 8, mode="sorted")
    with pytest.raises(ValueError, match="positive integer"):
        make_batches(c.train, 0)


def test_grammar_corpus_is_readable_labelled_and_seeded():
    a, b = grammar_corpus(seed=5, n_train=300, n_valid=30, n_test=30), grammar_corpus(seed=5, n_train=300, n_valid=30,
                                                                                     n_test=30)
    assert a.vocab == b.vocab and all(torch.equal(x, y) for x, y in zip(a.train.sentences, b.train.sentences))
    assert set(a.train.labels.tolist()) == {0, 1} and a.label_names == ["negative", "positive"]
    assert set(a.train.factors["topic"].tolist()) == {0, 1, 2, 3}
    text = a.vocab.decode(a.train.sentences[0].tolist())
    assert all(w.isalpha() or w in {".", ","} for w in text.split())
    assert 5 <= min(len(s) for s in a.train.sentences) and max(len(s) for s in a.train.sentences) <= 20
    with pytest.raises(ValueError, match="n_valid"):
        grammar_corpus(n_valid=0)


def test_write_and_reload_builtin_corpus(tmp_path):
    c = grammar_corpus(seed=1, n_train=100, n_valid=20, n_test=20)
    write_corpus(c, str(tmp_path))
    r = load_corpus(str(tmp_path))
    assert r.vocab == c.vocab
    assert torch.equal(r.test.labels, c.test.labels) and r.label_names == c.label_names
    assert all(torch.equal(x, y) for x, y in zip(r.valid.sentences, c.valid.sentences))


def test_synthetic_corpus():
    c = synthetic_corpus(seed=2, n_train=64, n_valid=16, n_test=16, vocab_size=50)
    assert all(len(s) == 10 for s in c.train.sentences)
    assert c.train.factors["z"].shape == (64, 2) and len(c.vocab) <= 54
    d = synthetic_corpus(seed=2, n_train=64, n_valid=16, n_test=16, vocab_size=50)
    assert all(torch.equal(x, y) for x, y in zip(c.test.sentences, d.test.sentences))


def test_real_ptb_split_reads(shared_data):
    path = os.path.join(shared_data, "ptb", "valid.txt")
    c = load_corpus(train=path, valid=path, test=os.path.join(shared_data, "ptb", "test.txt"))
    assert len(c.train) == 3370 and 5000 < len(c.vocab) <= 10004
    assert c.stats["test"]["unk_tokens"] > 0


def test_overlong_line_is_refused_with_file_and_line(tmp_path):
    good = write(tmp_path / "ok.txt", "a b\n")
    bad = write(tmp_path / "train.txt", "a b\n" + "word " * 20 + "\nc d\n")
    with pytest.raises(CorpusError, match=r"train.txt:2: line longer than 50 bytes"):
        load_corpus(train=bad, valid=good, test=good, max_line_bytes=50)
    # At the limit (newline included) the line is read; max_len then truncates it, counted.
    exact = write(tmp_path / "exact.txt", "a b\n" + "w" * 49 + "\n")
    c = load_corpus(train=exact, valid=good, test=good, max_line_bytes=50)
    assert len(c.train) == 2
    c = load_corpus(train=bad, valid=good, test=good, max_len=3)
    assert c.stats["train"]["truncated_lines"] == 1 and [len(s) for s in c.train.sentences] == [2, 3, 2]
    with pytest.raises(ValueError, match="max_line_bytes"):
        load_corpus(train=good, valid=good, test=good, max_line_bytes=0)


def test_byte_order_mark_and_crlf_are_not_part_of_words(tmp_path):
    f = write(tmp_path / "bom.txt", "\ufeffhello world\r\ngood day\r\n".encode("utf-8"), "wb")
    c = load_corpus(train=f, valid=f, test=f)
    assert c.vocab.decode(c.train.sentences[0].tolist()) == "hello world"
    assert "\ufeffhello" not in c.vocab.stoi and all("\r" not in w for w in c.vocab.itos)
