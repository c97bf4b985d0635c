"""fastvae.nn.dropout against its reference F.dropout: the same distribution (kept with probability 1 - p,
scaled by 1 / (1 - p)), the same gradient rule, reproducible from the seed, every dtype, edge values of p, bad
input; and the models use it."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastvae.nn.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_same_distribution_as_f_dropout(p, dtype):
    x = torch.rand(64, 13, 251, dtype=torch.float64).add_(0.5).to(dtype)  # no zeros: kept <=> nonzero
    out = dropout(x, p)
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    # kept values are x times 1 / (1 - p) in x's dtype, F.dropout's arithmetic (its mask holds the scale)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    torch.testing.assert_close(out[kept], (x * scale)[kept], rtol=0, atol=0)
    n = x.numel()
    for name, mask in (("fastvae", kept), ("F.dropout", F.dropout(x, p, True) != 0)):
        fraction = mask.double().mean().item()
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(fraction - (1 - p)) < 5 * sigma, f"{name}: kept {fraction:.5f}, expected {1 - p} +- {5 * sigma:.5f}"
    # no structure: rows and positions are independent (each row's kept fraction spreads binomially)
    per_row = kept.double().mean(dim=(1, 2))
    assert per_row.std().item() < 3 * math.sqrt(p * (1 - p) / (13 * 251))


def test_gradient_is_the_mask_scaled_and_gradcheck_float64():
    x = torch.rand(7, 9, dtype=torch.float64).add_(0.5).requires_grad_()
    out = dropout(x, 0.3)
    out.sum().backward()
    expected = (out.detach() != 0).double() / 0.7
    torch.testing.assert_close(x.grad, expected)

    def seeded(t):
        torch.manual_seed(1234)  # one mask for every evaluation gradcheck makes
        return dropout(t, 0.3)

    assert torch.autograd.gradcheck(seeded, (x.detach().clone().requires_grad_(),))


def test_reproducible_from_the_seed():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.5)
    torch.manual_seed(7)
    b = dropout(x, 0.5)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_edges_and_eval():
    x = torch.randn(5, 6)
    assert dropout(x, 0.0) is x and dropout(x, 0.7, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(torch.empty(0, 3), 0.5).shape == (0, 3)
    # a multiplicative mask, as F.dropout's: a dropped inf becomes nan there too, a kept one stays inf
    special = torch.tensor([float("inf"), float("nan"), -0.0, 3.0] * 500)
    out = dropout(special, 0.5)
    finite = special == 3.0
    kept = out[finite] != 0
    assert kept.any() and (~kept).any() and torch.equal(out[finite][kept], torch.full_like(out[finite][kept], 6.0))
    assert torch.isnan(out[special != special]).all()
    at_inf = out[torch.isinf(special)]
    assert (torch.isposinf(at_inf) | torch.isnan(at_inf)).all() and torch.isposinf(at_inf).any()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout(x, bad)


def test_module_is_an_nn_dropout_and_the_models_use_it():
    from fastvae.models import LSTMLM, TextVAE
    from fastvae.nn import LSTMDecoder

    module = Dropout(0.25)
    assert isinstance(module, torch.nn.Dropout) and repr(module) == repr(torch.nn.Dropout(0.25))
    assert module.state_dict() == {}
    module.eval()
    x = torch.randn(3, 4)
    assert module(x) is x
    decoder = LSTMDecoder(20, 4, 6, 2)
    assert isinstance(decoder.dropout_in, Dropout) and isinstance(decoder.dropout_out, Dropout)
    assert isinstance(TextVAE(30, "tiny").decoder.dropout_out, Dropout)
    assert isinstance(LSTMLM(30, "tiny").dropout_in, Dropout)
