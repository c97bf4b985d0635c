"""Reconstruction BLEU: sacreBLEU configured as multi-bleu.perl, and the encode -> decode -> score plumbing."""
import collections
import math
import random

import pytest
import torch

from fastvae.data import TextDataset, Vocab
from fastvae.data.builtin import grammar_corpus
from fastvae.evaluation import corpus_bleu, reconstruction_bleu
from fastvae.models import LSTMLM, TextVAE

pytest.importorskip("sacrebleu", reason="reconstruction BLEU needs the optional extra fastvae[bleu]")


def multi_bleu(hypotheses, references, max_n=4):
    """A reading of Moses' multi-bleu.perl for one reference per sentence: clipped n-gram precisions summed over
    the corpus, their geometric mean, brevity penalty exp(1 - r/c) when c < r; 0 when any precision is 0."""
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc = collections.Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rc = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            matched[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(log_precision)


@pytest.mark.parametrize("trial", range(5))
def test_corpus_bleu_is_multi_bleu(trial, fresh_seed):
    rng = random.Random(fresh_seed + trial)
    words = [f"w{i}" for i in range(6)]
    refs = [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(40)]
    # hypotheses: the reference with words dropped, replaced and appended (shorter and longer ones)
    hyps = []
    for ref in refs:
        tokens = [w if rng.random() > 0.3 else rng.choice(words) for w in ref.split() if rng.random() > 0.1]
        hyps.append(" ".join(tokens + rng.choices(words, k=rng.randint(0, 2))))
    assert corpus_bleu(hyps, refs) == pytest.approx(multi_bleu(hyps, refs), rel=1e-9, abs=1e-9)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_corpus_bleu_bad_inputs():
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        corpus_bleu(["a b", "c"], ["a b"])
    with pytest.raises(ValueError, match="no sentences"):
        corpus_bleu([], [])
    assert corpus_bleu(["x y z"], ["a b c d"]) == 0.0  # no matching unigram: 0, as multi-bleu.perl


class LookupVAE(torch.nn.Module):
    """mu = the sentence's first word id (distinct per sentence), std 1e-4; its decoder returns the sentence whose
    first word is round(z), with the last word dropped when `lossy`: the BLEU of every combination is known."""

    def __init__(self, dataset, lossy=False):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.by_first = {int(s[0]): s.tolist() for s in dataset.sentences}
        self.lossy = lossy
        object.__setattr__(self, "decoder", self)  # not a submodule: the model is its own decoder
        self.calls = []

    def encode(self, tokens, lengths):
        mu = tokens[:, 1:2].double()
        return mu, torch.full_like(mu, math.log(1e-8))

    def generate(self, z, bos_id, eos_id, max_len, strategy="greedy", beam_size=5, **_):
        self.calls.append((strategy, z.shape[0], beam_size))
        out = [self.by_first[int(round(float(v)))] for v in z[:, 0]]
        return [s[:-1] if self.lossy and len(s) > 1 else s for s in out][:max_len]


def _lookup_data():
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(40)]
    vocab = Vocab(words)
    rng = random.Random(0)
    sentences = [torch.tensor([4 + i] + [rng.randrange(4, 44) for _ in range(rng.randint(3, 8))]) for i in range(30)]
    return vocab, TextDataset(sentences, name="lookup")


def test_reconstruction_bleu_combinations():
    vocab, data = _lookup_data()
    perfect = LookupVAE(data)
    result = reconstruction_bleu(perfect, data, vocab, batch_size=7, beam_size=3)
    assert set(result) == {"bleu_greedy_mean", "bleu_beam_mean", "bleu_greedy_sample", "bleu_beam_sample"}
    assert all(v == pytest.approx(100.0) for v in result.values())
    assert {c[0] for c in perfect.calls} == {"greedy", "beam"} and all(c[2] == 3 for c in perfect.calls)
    lossy = LookupVAE(data, lossy=True)
    refs = [vocab.decode(s.tolist()) for s in data.sentences]
    hyps = [" ".join(r.split()[:-1]) for r in refs]
    got = reconstruction_bleu(lossy, data, vocab, sources=("mean",), strategies=("greedy",))
    assert got == {"bleu_greedy_mean": pytest.approx(multi_bleu(hyps, refs), rel=1e-9)}


def test_reconstruction_bleu_on_a_real_model_and_bad_inputs():
    corpus = grammar_corpus(seed=4, n_train=50, n_valid=12, n_test=12)
    model = TextVAE(len(corpus.vocab), "tiny").train()
    result = reconstruction_bleu(model, corpus.test, corpus.vocab, max_len=12,
                                 generator=torch.Generator().manual_seed(0))
    assert len(result) == 4 and all(0.0 <= v <= 100.0 for v in result.values())
    assert model.training  # restored
    with pytest.raises(ValueError, match="sources must be a non-empty subset"):
        reconstruction_bleu(model, corpus.test, corpus.vocab, sources=("median",))
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        reconstruction_bleu(model, corpus.test, corpus.vocab, max_len=0)
    with pytest.raises(ValueError, match="language model"):
        reconstruction_bleu(LSTMLM(len(corpus.vocab), "tiny"), corpus.test, corpus.vocab)
