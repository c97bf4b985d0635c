"""Files that read but are probably not what the user meant: refused when unmistakable, warned otherwise,
and the <unk> rate of every split is reported (training) or returned (eval)."""
import json
import random
import warnings

import pytest

from fastvae.cli import main
from fastvae.data import CorpusError, load_corpus
from fastvae.data.corpus import CorpusWarning, unk_rate

WORDS = [f"w{i}" for i in range(300)]


def sentences(n, seed, words=WORDS):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def write_dir(root, train, valid=None, test=None):
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("valid", valid or train[:20]), ("test", test or train[20:40])):
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def corpus_warnings(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_corpus(**kwargs)
    return corpus, [str(w.message) for w in caught if issubclass(w.category, CorpusWarning)]


def test_swapped_text_and_label_columns_are_refused(tmp_path):
    rng = random.Random(0)
    lines = [f"{s}\t{rng.choice(['pos', 'neg'])}" for s in sentences(200, 1)]
    with pytest.raises(CorpusError, match="columns swapped") as info:
        load_corpus(write_dir(tmp_path, lines))
    assert "train.txt" in str(info.value) and "label<TAB>text" in str(info.value)
    # the right way round reads, with two labels
    right = [f"{line.split(chr(9))[1]}\t{line.split(chr(9))[0]}" for line in lines]
    corpus, seen = corpus_warnings(data_dir=write_dir(tmp_path / "right", right))
    assert corpus.label_names == ["neg", "pos"] and not seen


def test_text_read_as_labels_and_extra_columns_are_warned(tmp_path):
    text = sentences(200, 2)
    # a tab inside the text: everything before it becomes one "label" per line
    halves = [f"{' '.join(s.split()[:2])}\t{' '.join(s.split()[2:])}" for s in text]
    _, seen = corpus_warnings(data_dir=write_dir(tmp_path / "labels", halves))
    assert any("distinct labels" in m for m in seen), seen
    three = [f"1\t{s}\t{i}" for i, s in enumerate(text)]
    _, seen = corpus_warnings(data_dir=write_dir(tmp_path / "tsv", three))
    assert any("more than one tab" in m and "200 of 200" in m for m in seen), seen


def test_a_mostly_unknown_evaluation_split_and_a_tiny_vocabulary_are_warned(tmp_path):
    train = sentences(200, 3)
    other = sentences(30, 4, words=[f"x{i}" for i in range(100)])  # none of these words is in train
    corpus, seen = corpus_warnings(data_dir=write_dir(tmp_path / "unk", train, valid=other))
    assert unk_rate(corpus.valid) == 1.0 and unk_rate(corpus.train) == 0.0
    assert any("valid.txt" in m and "100.0% of its words are <unk>" in m for m in seen), seen
    assert not any("test.txt" in m for m in seen)
    tiny = sentences(200, 5, words=["a", "b", "c"])
    _, seen = corpus_warnings(data_dir=write_dir(tmp_path / "tiny", tiny))
    assert any("only 3 distinct words" in m for m in seen), seen


def test_documents_instead_of_sentences_are_warned(tmp_path):
    documents = [" ".join(sentences(8, i)) for i in range(60)]
    _, seen = corpus_warnings(data_dir=write_dir(tmp_path, documents), max_len=20)
    assert any("longer than max_len=20" in m and "one document per line" in m for m in seen), seen


def test_the_cli_reports_unk_rates_and_prints_warnings_as_one_line(tmp_path, capsys):
    train = sentences(120, 6)
    other = sentences(30, 7, words=[f"x{i}" for i in range(100)])
    data = write_dir(tmp_path / "data", train, valid=train[:20], test=other)
    out = tmp_path / "run"
    assert main(["train", "--data", data, "--config", "tiny", "--epochs", "1", "--batch-size", "16",
                 "--iw-samples", "0", "--out", str(out), "--no-progress", "--json", "--examples", "0"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])["data"]
    assert report == {"train": {"sentences": 120, "unk_rate": 0.0}, "valid": {"sentences": 20, "unk_rate": 0.0},
                      "test": {"sentences": 30, "unk_rate": 1.0}}
    assert "fastvae train: warning: " in captured.err and "test.txt: 100.0% of its words are <unk>" in captured.err
    assert main(["train", "--data", data, "--config", "tiny", "--epochs", "1", "--batch-size", "16",
                 "--iw-samples", "0", "--out", str(out), "--overwrite", "--no-progress", "--examples", "0"]) == 0
    assert "data: train 120 sentences (<unk> 0.0%), valid 20 sentences (<unk> 0.0%), test 30 sentences " \
           "(<unk> 100.0%)" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", data, "--split", "test",
                 "--iw-samples", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["unk_rate"] == 1.0
    assert "fastvae eval: warning: " in captured.err and "<unk> for the vocabulary of the checkpoint" in captured.err
