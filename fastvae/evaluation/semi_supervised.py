"""Li et al.'s semi-supervised classification (`text_ss_ft.py`): how useful the posterior mean is as a feature
when only a few labels exist.

A classifier on mu(x) is trained on a labelled subset of N training sentences (the papers: 100, 500, 1,000,
2,000, 10,000), with the encoder frozen or fine-tuned with it, selected on the validation split's loss, and
scored by accuracy on the test split. As the reference:
  linear  Linear(nz, classes); dropout 0.5 on mu when the encoder is fine-tuned
  mlp     Linear(nz, nz), ReLU, Dropout 0.3, Linear(nz, nz), ReLU, Dropout 0.3, Linear(nz, classes)
  SGD lr 1 (or Adam 1e-3), batches of 16, gradient-norm clip 5 over the trained parameters, up to 100 epochs;
  when the validation loss has not improved for 2 epochs, lr x 0.5 with the best weights reloaded; stop after
  5 decays. The subset is a seeded uniform sample of the labelled training split.
This is a different protocol from `probe_acc` (a logistic regression on 80% of one split, scored on the rest).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..data import make_batches
from ..data.corpus import TextDataset
from .metrics import posterior_stats

CLASSIFIERS = ("linear", "mlp")
PAPER_LABEL_COUNTS = (100, 500, 1000, 2000, 10000)


class LatentClassifier(nn.Module):
    """A classifier on a VAE's posterior mean (`model.encode`, fastvae.models.protocol). A fine-tuned encoder
    trains in a copy of the model (the VAE is never changed; only its encoder_parameters() train); a frozen one
    is the model itself, used without gradients and in eval mode."""

    def __init__(self, model: nn.Module, latent_dim: int, num_classes: int, kind: str, freeze_encoder: bool):
        super().__init__()
        if kind not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.vae = None
            self.__dict__["_frozen_model"] = model  # not a submodule: .to(), parameters() and state_dict skip it
        else:
            self.vae = copy.deepcopy(model)
            encoder_ids = {id(p) for p in self.vae.encoder_parameters()}
            for p in self.vae.parameters():
                p.requires_grad_(id(p) in encoder_ids)
        if kind == "linear":
            self.head = nn.Sequential(nn.Dropout(0.0 if freeze_encoder else 0.5), nn.Linear(latent_dim, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Linear(latent_dim, latent_dim), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Linear(latent_dim, num_classes))

    def forward(self, tokens, lengths):
        if self.vae is None:
            model = self.__dict__["_frozen_model"]
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    mu, _ = model.encode(tokens, lengths)
            finally:
                model.train(was_training)
        else:
            mu, _ = self.vae.encode(tokens, lengths)
        return self.head(mu.float())

    def trained_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


def labelled_subset(dataset: TextDataset, num_labels: int, seed: int = 0) -> TextDataset:
    """A seeded uniform sample of `num_labels` labelled sentences of `dataset`."""
    if dataset.labels is None:
        raise ValueError(f"split {dataset.name!r} has no labels: semi-supervised classification needs a labelled "
                         "corpus (lines `label<TAB>sentence`)")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    if num_labels > len(dataset):
        raise ValueError(f"num_labels {num_labels} is more than the {len(dataset)} sentences of split "
                         f"{dataset.name!r}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_labels]
    return dataset.subset(sorted(order.tolist()))


@torch.no_grad()
def _score(classifier, dataset, device, features=None, batch_size=128):
    """(mean cross-entropy, accuracy) on `dataset`; `features`: its posterior means when the encoder is frozen."""
    classifier.eval()
    labels = dataset.labels.to(device)
    if features is not None:  # a frozen encoder: mu computed once
        logits = classifier.head(features)
        return float(nn.functional.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).double().mean())
    loss = correct = 0.0
    for batch in make_batches(dataset, batch_size, mode="bucket", shuffle=False):
        batch = batch.to(device)
        logits = classifier(batch.tokens, batch.lengths)
        loss += float(nn.functional.cross_entropy(logits, batch.labels, reduction="sum"))
        correct += float((logits.argmax(1) == batch.labels).sum())
    return loss / len(dataset), correct / len(dataset)


def semi_supervised_accuracy(model, train: TextDataset, valid: TextDataset, test: TextDataset, *,
                             num_labels: int = 100, classifier: str = "linear", freeze_encoder: bool = True,
                             epochs: int = 100, batch_size: int = 16, optimizer: str = "sgd", lr: float | None = None,
                             clip: float = 5.0, patience: int = 2, max_decays: int = 5, seed: int = 0) -> dict:
    """Li et al.'s protocol (module docstring) for one labelled-subset size: the test accuracy of the classifier
    with the best validation loss, and what led to it."""
    from ..models.protocol import is_vae_model

    if not is_vae_model(model):
        raise ValueError("semi-supervised classification needs a VAE's encoder; this is a language model")
    if not freeze_encoder and not callable(getattr(model, "encoder_parameters", None)):
        raise ValueError(f"fine-tuning the encoder needs {type(model).__name__}.encoder_parameters() (which "
                         f"parameters are the encoder's, fastvae.models.protocol); or freeze it")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience),
                        ("max_decays", max_decays)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for split in (valid, test):
        if split.labels is None:
            raise ValueError(f"split {split.name!r} has no labels: the protocol selects on valid and scores on test")
    subset = labelled_subset(train, num_labels, seed)
    num_classes = int(max(int(s.labels.max()) for s in (train, valid, test))) + 1
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # the classifier's initialisation and dropout masks
    net = LatentClassifier(model, model.latent_dim, num_classes, classifier, freeze_encoder).to(device)
    lr = lr if lr is not None else (1.0 if optimizer == "sgd" else 1e-3)

    def new_optimizer(rate):
        params = net.trained_parameters()
        return torch.optim.SGD(params, lr=rate) if optimizer == "sgd" else torch.optim.Adam(params, lr=rate)

    opt = new_optimizer(lr)
    shuffle = torch.Generator().manual_seed(seed + 1)
    # a frozen encoder is the VAE's own (a copy of it) and deterministic (no dropout in it): its posterior means
    # are computed once, by the evaluator's posterior_stats
    cached = {name: posterior_stats(model, split, device=device, batch_mode="bucket")[0].float() for name, split in
              (("train", subset), ("valid", valid), ("test", test))} if freeze_encoder else {}
    best_loss, best_state, best_epoch = math.inf, None, None
    previous, not_improved, decays, epochs_run = math.inf, 0, 0, 0
    for epoch in range(epochs):
        net.train()
        for batch in make_batches(subset, batch_size, mode="bucket", shuffle=True, generator=shuffle):
            batch = batch.to(device)
            logits = net.head(cached["train"][batch.indices]) if cached else net(batch.tokens, batch.lengths)
            loss = nn.functional.cross_entropy(logits, batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(net.trained_parameters(), clip)
            opt.step()
        epochs_run = epoch + 1
        valid_loss, _ = _score(net, valid, device, cached.get("valid"))
        if valid_loss < best_loss:
            best_loss, best_epoch = valid_loss, epoch + 1
            best_state = copy.deepcopy(net.state_dict())
        # the reference's decay-on-plateau: compared with the previous epoch's loss, as text_ss_ft.py does
        if valid_loss > previous:
            not_improved += 1
            if not_improved >= patience:
                previous, not_improved = valid_loss, 0
                lr *= 0.5
                decays += 1
                net.load_state_dict(best_state)
                opt = new_optimizer(lr)
        else:
            previous, not_improved = valid_loss, 0
        if decays == max_decays:
            break
    net.load_state_dict(best_state)
    valid_loss, valid_acc = _score(net, valid, device, cached.get("valid"))
    _, test_acc = _score(net, test, device, cached.get("test"))
    return {"num_labels": num_labels, "classifier": classifier, "freeze_encoder": freeze_encoder,
            "valid_loss": valid_loss, "valid_acc": valid_acc, "test_acc": test_acc, "best_epoch": best_epoch,
            "epochs_run": epochs_run, "lr_decays": decays, "num_classes": num_classes}
