"""Li et al.'s semi-supervised classification protocol on models where the answer is known."""
import pytest
import torch
from torch import nn

from fastvae.data import TextDataset
from fastvae.data.builtin import grammar_corpus
from fastvae.evaluation.semi_supervised import LatentClassifier, labelled_subset, semi_supervised_accuracy
from fastvae.models import LSTMLM, TextVAE


class LabelEncoder(nn.Module):
    """mu[:, 0] = +-2 by the parity of the first word (the label), the other dimensions noise-free zeros, plus one
    trainable scale so that fine-tuning has something to change."""

    def __init__(self, nz=4):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.nz = nz

    def forward(self, tokens, lengths):
        sign = (tokens[:, 1] % 2).float() * 4 - 2
        mu = torch.zeros(tokens.shape[0], self.nz)
        mu[:, 0] = sign
        return mu * self.scale, torch.zeros_like(mu)


class LabelVAE(nn.Module):
    latent_dim = 4

    def __init__(self):
        super().__init__()
        self.encoder = LabelEncoder(self.latent_dim)

    def encode(self, tokens, lengths):
        return self.encoder(tokens, lengths)

    def encoder_parameters(self):
        return self.encoder.parameters()


def _split(n, seed, name):
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(4, 40, (n,), generator=gen)
    sentences = [torch.cat([first[i:i + 1], torch.randint(4, 40, (int(torch.randint(2, 6, (1,), generator=gen)),),
                                                          generator=gen)]) for i in range(n)]
    return TextDataset(sentences, first % 2, name)


@pytest.mark.parametrize("classifier,freeze", [("linear", True), ("linear", False), ("mlp", True), ("mlp", False)])
def test_a_code_that_carries_the_label_is_classified_perfectly(classifier, freeze):
    train, valid, test = _split(300, 0, "train"), _split(60, 1, "valid"), _split(60, 2, "test")
    model = LabelVAE()
    result = semi_supervised_accuracy(model, train, valid, test, num_labels=100, classifier=classifier,
                                      freeze_encoder=freeze, epochs=30, optimizer="adam", lr=0.05)
    assert result["test_acc"] == 1.0 and result["valid_acc"] == 1.0
    assert result["num_classes"] == 2 and 1 <= result["best_epoch"] <= result["epochs_run"] <= 30
    assert float(model.encoder.scale.detach()) == 1.0  # the VAE itself is never changed


def test_fine_tuning_trains_a_copy_of_the_encoder_and_freezing_does_not():
    model = TextVAE(50, "tiny")
    frozen = LatentClassifier(model, model.latent_dim, 3, "linear", freeze_encoder=True)
    tuned = LatentClassifier(model, model.latent_dim, 3, "linear", freeze_encoder=False)
    assert frozen.trained_parameters() == list(frozen.head.parameters())  # the frozen model is not a submodule
    assert len(tuned.trained_parameters()) == len(list(model.encoder.parameters())) + 2
    assert frozen.head[0].p == 0.0 and tuned.head[0].p == 0.5  # dropout on mu only when fine-tuning, as the reference
    assert tuned.vae is not model and all(p.requires_grad for p in model.parameters())
    tokens = torch.tensor([[1, 5, 6, 2]])
    assert frozen(tokens, torch.tensor([4])).shape == (1, 3) and model.training  # eval for encoding, then restored


def test_on_a_real_vae_and_labelled_subsets():
    corpus = grammar_corpus(seed=5, n_train=150, n_valid=30, n_test=30)
    model = TextVAE(len(corpus.vocab), "tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = semi_supervised_accuracy(model, corpus.train, corpus.valid, corpus.test, num_labels=40,
                                      classifier="mlp", freeze_encoder=False, epochs=3)
    assert 0.0 <= result["test_acc"] <= 1.0 and result["epochs_run"] <= 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    a, b = labelled_subset(corpus.train, 40, seed=3), labelled_subset(corpus.train, 40, seed=3)
    assert len(a) == 40 and all(torch.equal(x, y) for x, y in zip(a.sentences, b.sentences))
    assert torch.equal(a.labels, b.labels)


def test_bad_inputs():
    corpus = grammar_corpus(seed=5, n_train=20, n_valid=5, n_test=5)
    model = TextVAE(len(corpus.vocab), "tiny")
    args = (corpus.train, corpus.valid, corpus.test)
    with pytest.raises(ValueError, match="more than the 20 sentences"):
        semi_supervised_accuracy(model, *args, num_labels=21)
    with pytest.raises(ValueError, match="unknown classifier"):
        semi_supervised_accuracy(model, *args, num_labels=5, classifier="svm")
    with pytest.raises(ValueError, match="has no labels"):
        labelled_subset(TextDataset([torch.tensor([4])]), 1)
    with pytest.raises(ValueError, match="language model"):
        semi_supervised_accuracy(LSTMLM(len(corpus.vocab), "tiny"), *args)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        semi_supervised_accuracy(model, *args, num_labels=5, epochs=0)
