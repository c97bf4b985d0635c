"""The built-in corpora carry the factors they claim: a bag-of-words read-out recovers the grammar corpus's
topic and sentiment, and the synthetic corpus's sentences depend on their 2-d latent."""
import torch

from fastvae.data import BOS, EOS, grammar_corpus, make_batches, synthetic_corpus
from fastvae.evaluation import linear_probe_accuracy


def bag_of_words(dataset, vocab_size):
    rows = torch.zeros(len(dataset), vocab_size)
    for i, s in enumerate(dataset.sentences):
        rows[i].index_add_(0, s, torch.ones(len(s)))
    return rows


def test_grammar_factors_are_recoverable_from_the_words():
    c = grammar_corpus(seed=3, n_train=600, n_valid=50, n_test=50)
    x = bag_of_words(c.train, len(c.vocab))
    assert linear_probe_accuracy(x, c.train.factors["sentiment"]) > 0.9
    assert linear_probe_accuracy(x, c.train.factors["topic"]) > 0.9
    # Topic and sentiment are drawn independently: every combination occurs.
    pairs = set(zip(c.train.factors["topic"].tolist(), c.train.factors["sentiment"].tolist()))
    assert len(pairs) == 8


def test_grammar_corpus_is_demo_sized_and_batches_in_reference_buckets():
    c = grammar_corpus()  # the defaults the no-argument demo trains on
    assert (len(c.train), len(c.valid), len(c.test)) == (10000, 1000, 1000)
    assert 150 < len(c.vocab) < 1000  # small enough for the tiny config to learn in minutes
    batches = make_batches(c.train, 32, generator=torch.Generator().manual_seed(0))
    assert sum(b.size for b in batches) == len(c.train)
    for b in batches[:20]:
        assert (b.lengths == b.lengths[0]).all() and (b.tokens[:, 0] == BOS).all() and (b.tokens[:, -1] == EOS).all()
    other = grammar_corpus(seed=1, n_train=50, n_valid=5, n_test=5)
    assert [s.tolist() for s in other.train.sentences[:5]] != [s.tolist() for s in c.train.sentences[:5]]


def test_synthetic_sentences_depend_on_their_latent():
    c = synthetic_corpus(seed=0, n_train=2000, n_valid=10, n_test=10, vocab_size=30)
    z = c.train.factors["z"]
    first = torch.stack([s[0] for s in c.train.sentences])
    # The first word is drawn from softmax(W h(z)); a read-out of the words recovers which half-plane z lies in.
    side = (z[:, 0] > 0).long()
    assert linear_probe_accuracy(bag_of_words(c.train, len(c.vocab)), side) > 0.6
    assert len(set(first.tolist())) > 1
