"""fastvae.nn.GaussianLatent and ELBOLoss: shapes, the KL weight, free bits, masking, gradients."""
import pytest
import torch

import fastvae.functional as F
from fastvae.nn import ELBOLoss, GaussianLatent


def test_gaussian_latent_outputs_and_weight():
    layer = GaussianLatent(10, 4, free_bits_mode="dim", target=1.0, kl_weight=0.3)
    h = torch.randn(6, 10)
    out = layer(h, generator=torch.Generator().manual_seed(1))
    mu, logvar = layer.posterior(h)
    assert out.z.shape == (6, 4) and layer.proj.bias is None  # reference encoders use bias=False
    torch.testing.assert_close(out.mu, mu)
    torch.testing.assert_close(out.kl_term, 0.3 * F.free_bits_kl(mu, logvar, 1.0, "dim"))
    torch.testing.assert_close(out.kl, F.kl_per_dim(mu, logvar).sum(1).mean().detach())  # unmasked
    z_again = layer(h, generator=torch.Generator().manual_seed(1)).z
    assert torch.equal(out.z, z_again)
    layer.kl_weight = 0.0
    assert layer(h).kl_term.item() == 0.0
    assert layer(h, 3).z.shape == (6, 3, 4)
    assert torch.equal(layer(h, sample=False).z, mu)
    (out.z.sum() + out.kl_term).backward()
    assert layer.proj.weight.grad is not None and torch.isfinite(layer.proj.weight.grad).all()


def test_gaussian_latent_bad_arguments():
    with pytest.raises(ValueError, match="unknown free-bits mode"):
        GaussianLatent(4, 2, free_bits_mode="fb9")
    with pytest.raises(ValueError, match="kl_weight"):
        GaussianLatent(4, 2).kl_weight = -1
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        GaussianLatent(4, 2)(torch.randn(3, 5))


def test_elbo_loss_masks_padding_and_combines_terms():
    batch, time, vocab = 3, 5, 7
    logits = torch.randn(batch, time, vocab, requires_grad=True)
    targets = torch.randint(1, vocab, (batch, time))
    targets[0, 3:] = 0  # padding (pad_id 0)
    mu = torch.randn(batch, 2, requires_grad=True)
    logvar = torch.randn(batch, 2, requires_grad=True)
    loss_fn = ELBOLoss(free_bits_mode="sentence", target=0.5, kl_weight=0.7)
    out = loss_fn(logits, targets, mu, logvar)
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rec = -(log_probs * (targets != 0)).sum(1)
    torch.testing.assert_close(out.rec, rec.mean())
    kl_term = F.free_bits_kl(mu, logvar, 0.5, "sentence")
    torch.testing.assert_close(out.loss, rec.mean() + 0.7 * kl_term)
    kl = F.kl_per_dim(mu, logvar).sum(1).mean()
    torch.testing.assert_close(out.kl, kl.detach())
    torch.testing.assert_close(out.elbo, (rec.mean() + kl).detach())
    out.loss.backward()
    assert logits.grad[0, 3:].abs().sum() == 0  # padding gets no gradient
    assert mu.grad is not None


def test_elbo_loss_with_samples_averages_reconstruction():
    logits = torch.randn(2, 4, 3, 6)
    targets = torch.randint(1, 6, (2, 3))
    mu, logvar = torch.randn(2, 5), torch.randn(2, 5)
    loss_fn = ELBOLoss()
    per_sample = loss_fn.reconstruction(logits, targets)
    assert per_sample.shape == (2, 4)
    torch.testing.assert_close(loss_fn(logits, targets, mu, logvar).rec, per_sample.mean(1).mean())
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(logits, targets[:, :2], mu, logvar)
