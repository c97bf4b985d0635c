"""fastvae.nn.LSTMDecoder against the same model wired in plain torch (nn.LSTM on [emb; z] inputs)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvae import backend
from fastvae.nn import LSTMDecoder

LSTM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class PlainDecoder(nn.Module):
    """The reference decoder of recipes.md in plain torch, sharing the fastvae decoder's weights."""

    def __init__(self, decoder: LSTMDecoder):
        super().__init__()
        self.embed = nn.Embedding(decoder.vocab_size, decoder.emb_dim)
        self.lstm = nn.LSTM(decoder.emb_dim + decoder.latent_dim, decoder.hidden_dim, batch_first=True)
        self.latent_to_cell = nn.Linear(decoder.latent_dim, decoder.hidden_dim, bias=False)
        self.output = nn.Linear(decoder.hidden_dim, decoder.vocab_size, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(decoder.embed.weight)
            for name in LSTM_NAMES:
                getattr(self.lstm, name).copy_(getattr(decoder, name))
            self.latent_to_cell.weight.copy_(decoder.latent_to_cell.weight)
            self.output.weight.copy_(decoder.output.weight)

    def forward(self, inputs, z):
        if z.dim() == 3:  # one row per (sentence, sample)
            B, K, _ = z.shape
            out = self.forward(inputs.repeat_interleave(K, 0), z.reshape(B * K, -1))
            return out.view(B, K, *out.shape[1:])
        emb = self.embed(inputs)
        lstm_in = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        c0 = self.latent_to_cell(z)
        out, _ = self.lstm(lstm_in, (c0.tanh().unsqueeze(0), c0.unsqueeze(0)))
        return self.output(out)

    def grads(self):
        g = {"embed.weight": self.embed.weight.grad, "latent_to_cell.weight": self.latent_to_cell.weight.grad,
             "output.weight": self.output.weight.grad}
        g.update({name: getattr(self.lstm, name).grad for name in LSTM_NAMES})
        return g


def make_decoder(V=31, E=12, H=16, nz=5, dtype=torch.float32):
    decoder = LSTMDecoder(V, E, H, nz, dropout_in=0.0, dropout_out=0.0).to(dtype)
    with torch.no_grad():  # larger weights than the reference init, so the test sees real dynamics
        for p in decoder.parameters():
            p.uniform_(-0.3, 0.3)
    return decoder


def assert_close(got, want, atol=2e-5, rtol=1e-4, what=""):
    assert got.shape == want.shape, f"{what}: {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    assert torch.allclose(got, want, atol=atol, rtol=rtol), f"{what}: max abs diff {diff}"


@pytest.mark.parametrize("B,T,H,K", [(1, 1, 8, None), (37, 60, 50, None), (4, 9, 16, 3), (2, 5, 7, 1)])
def test_forward_and_gradients_equal_plain_torch(B, T, H, K):
    decoder = make_decoder(H=H)
    plain = PlainDecoder(decoder)
    inputs = torch.randint(0, decoder.vocab_size, (B, T))
    z_shape = (B, decoder.latent_dim) if K is None else (B, K, decoder.latent_dim)
    z = torch.randn(z_shape, requires_grad=True)
    z_plain = z.detach().clone().requires_grad_()
    logits = decoder(inputs, z)
    want = plain(inputs, z_plain)
    assert_close(logits, want, what="logits")
    upstream = torch.randn_like(want) * 2
    (logits * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert_close(z.grad, z_plain.grad, what="grad z")
    got_grads = dict(decoder.named_parameters())
    for name, grad in plain.grads().items():
        assert_close(got_grads[name].grad, grad, atol=5e-5, rtol=1e-3, what=f"grad {name}")


def test_weights_move_to_and_from_nn_lstm():
    decoder = make_decoder()
    lstm = nn.LSTM(decoder.emb_dim + decoder.latent_dim, decoder.hidden_dim)
    lstm.load_state_dict({name: getattr(decoder, name) for name in LSTM_NAMES})
    other = LSTMDecoder(decoder.vocab_size, decoder.emb_dim, decoder.hidden_dim, decoder.latent_dim)
    other.load_state_dict(decoder.state_dict())
    for name in LSTM_NAMES:
        assert torch.equal(getattr(lstm, name), getattr(decoder, name))
        assert getattr(other, name).shape == getattr(lstm, name).shape
    assert decoder.weight_ih_l0.shape == (4 * decoder.hidden_dim, decoder.emb_dim + decoder.latent_dim)


def test_reset_parameters_reference_init():
    decoder = LSTMDecoder(100, 16, 32, 8)
    assert decoder.embed.weight.abs().max() <= 0.1 and decoder.embed.weight.abs().max() > 0.05
    for name, p in decoder.named_parameters():
        if name != "embed.weight":
            assert p.abs().max() <= 0.01, name
    assert decoder.latent_to_cell.bias is None and decoder.output.bias is None
    assert (decoder.vocab_size, decoder.hidden_dim, decoder.latent_dim) == (100, 32, 8)


def test_padded_batch_matches_sentences_one_by_one():
    decoder = make_decoder()
    lengths = torch.tensor([5, 3, 1, 4])
    B, T = len(lengths), int(lengths.max())
    inputs = torch.zeros(B, T, dtype=torch.long)
    targets = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        inputs[b, :n] = torch.randint(4, decoder.vocab_size, (n,))
        targets[b, :n] = torch.randint(4, decoder.vocab_size, (n,))
    z = torch.randn(B, decoder.latent_dim)
    logits = decoder(inputs, z, lengths)
    assert torch.isfinite(logits).all()
    ll = decoder.token_log_likelihood(inputs, targets, z, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = decoder(inputs[b:b + 1, :n], z[b:b + 1])
        assert_close(logits[b, :n], alone[0], what=f"sentence {b}")
        want = F.log_softmax(alone[0], -1).gather(1, targets[b, :n, None]).sum()
        assert_close(ll[b], want, atol=1e-4, what=f"log-likelihood {b}")
    # Batch.lengths (one longer: the </s> position) gives the same masking for pad targets.
    assert_close(decoder.token_log_likelihood(inputs, targets, z, lengths + 1), ll, atol=1e-5)


def test_token_log_likelihood_chunks_samples_exactly():
    decoder = make_decoder()
    B, T, K = 3, 7, 6
    inputs = torch.randint(0, decoder.vocab_size, (B, T))
    targets = torch.randint(0, decoder.vocab_size, (B, T))
    targets[0, 4:] = 0  # padding
    z = torch.randn(B, K, decoder.latent_dim)
    whole = decoder.token_log_likelihood(inputs, targets, z)
    chunked = decoder.token_log_likelihood(inputs, targets, z, max_logits=B * T * decoder.vocab_size * 2)
    tiny = decoder.token_log_likelihood(inputs, targets, z, max_logits=1)
    assert whole.shape == (B, K)
    assert_close(chunked, whole, atol=1e-5)
    assert_close(tiny, whole, atol=1e-5)
    logp = F.log_softmax(decoder(inputs, z), -1).gather(-1, targets[:, None, :, None].expand(B, K, T, 1))[..., 0]
    assert_close(whole, (logp * (targets != 0)[:, None]).sum(-1), atol=1e-4)
    single = decoder.token_log_likelihood(inputs, targets, z[:, 2])
    assert_close(single, whole[:, 2], atol=1e-5)
    no_pad = decoder.token_log_likelihood(inputs, targets, z, pad_id=None)
    assert_close(no_pad, logp.sum(-1), atol=1e-4)


def test_gradient_to_z_only_when_decoder_frozen():
    """The aggressive recipe's encoder steps: decoder parameters frozen, only z needs a gradient."""
    decoder = make_decoder()
    plain = PlainDecoder(decoder)
    for p in list(decoder.parameters()) + list(plain.parameters()):
        p.requires_grad_(False)
    inputs = torch.randint(0, decoder.vocab_size, (5, 8))
    z = torch.randn(5, decoder.latent_dim, requires_grad=True)
    z_plain = z.detach().clone().requires_grad_()
    decoder.token_log_likelihood(inputs, inputs, z).sum().backward()
    F.log_softmax(plain(inputs, z_plain), -1).gather(-1, inputs[..., None]).masked_fill(
        (inputs == 0)[..., None], 0).sum().backward()
    assert_close(z.grad, z_plain.grad, atol=1e-4)
    assert all(p.grad is None for p in decoder.parameters())


def test_dropout_training_mode_and_backends_agree(monkeypatch):
    decoder = LSTMDecoder(40, 8, 12, 3)
    inputs = torch.randint(0, 40, (6, 9))
    z = torch.randn(6, 4, 3)
    decoder.train()
    ll = decoder.token_log_likelihood(inputs, inputs, z)
    ll.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters())
    decoder.eval()
    fast = decoder(inputs, z)
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    assert_close(decoder(inputs, z), fast, atol=1e-6)


def test_float64_gradcheck_through_decoder():
    decoder = make_decoder(V=9, E=3, H=4, nz=2, dtype=torch.float64)
    inputs = torch.randint(0, 9, (2, 3))
    z = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda zz: decoder.token_log_likelihood(inputs, inputs, zz), (z,))


@pytest.mark.slow
def test_torch_compile_traces_decoder():
    decoder = make_decoder().eval()
    inputs = torch.randint(0, decoder.vocab_size, (3, 6))
    z = torch.randn(3, decoder.latent_dim)
    compiled = torch.compile(decoder, fullgraph=True, backend="aot_eager")
    assert_close(compiled(inputs, z), decoder(inputs, z), atol=1e-5)
    if backend.cpp_available("cpu"):  # the traced graph holds the compiled op, not the Python loop
        targets = []

        def record(graph_module, example_inputs):
            targets.extend(str(node.target) for node in graph_module.graph.nodes)
            return graph_module

        torch.compile(decoder, fullgraph=True, backend=record)(inputs, z)
        assert "fastvae.lstm_sequence_forward" in targets


def test_bad_inputs_have_clear_messages():
    decoder = make_decoder()
    inputs = torch.randint(0, decoder.vocab_size, (3, 4))
    z = torch.randn(3, decoder.latent_dim)
    with pytest.raises(ValueError, match="inputs must be a LongTensor"):
        decoder(inputs.float(), z)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 31\)"):
        decoder(inputs + 100, z)
    with pytest.raises(ValueError, match="z must be"):
        decoder(inputs, z[:2])
    with pytest.raises(ValueError, match="z must be"):
        decoder(inputs, torch.randn(3, 7))
    with pytest.raises(ValueError, match="lengths must be in"):
        decoder(inputs, z, torch.tensor([1, 2, 9]))
    with pytest.raises(ValueError, match="lengths must be a LongTensor"):
        decoder(inputs, z, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="targets must be a LongTensor"):
        decoder.token_log_likelihood(inputs, inputs[:, :2], z)
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        LSTMDecoder(10, 4, 0, 2)
    with pytest.raises(ValueError, match="dropout_in must be in"):
        LSTMDecoder(10, 4, 4, 2, dropout_in=1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decoder_on_gpu_matches_cpu():
    backend.require_cpp("cuda")
    decoder = make_decoder(H=64)
    inputs = torch.randint(0, decoder.vocab_size, (8, 12))
    z = torch.randn(8, 3, decoder.latent_dim)
    want = decoder.token_log_likelihood(inputs, inputs, z)
    got = decoder.cuda().token_log_likelihood(inputs.cuda(), inputs.cuda(), z.cuda())
    assert_close(got.cpu(), want, atol=1e-3, rtol=1e-4)


def test_decoder_under_cpu_bf16_autocast_trains_and_generates():
    """Autocast hands the recurrence bf16 projections and a float32 weight_hh: the op runs in one dtype."""
    dec = LSTMDecoder(40, 8, 12, 3, dropout_in=0.0, dropout_out=0.0)
    inputs = torch.randint(3, 40, (4, 6))
    targets = torch.randint(3, 40, (4, 6))
    z = torch.randn(4, 3)
    want = dec.token_log_likelihood(inputs, targets, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dec.token_log_likelihood(inputs, targets, z)
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.5)
    got.float().sum().backward()
    assert dec.weight_hh_l0.grad is not None and torch.isfinite(dec.weight_hh_l0.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dec.generate(z, 1, 2, 5)
    assert len(out) == 4 and all(len(s) <= 5 for s in out)


def test_value_checks_read_cpu_tensors_and_gpu_tensors_only_when_asked(monkeypatch):
    """Range checks of ids and lengths read values back: free for CPU tensors, a host sync per call on a GPU,
    so there they run only with FASTVAE_CHECK_VALUES=1 (a meta tensor stands in for a device tensor here)."""
    from fastvae.nn.decoder import check_values

    on_device = torch.empty(3, dtype=torch.long, device="meta")
    monkeypatch.delenv("FASTVAE_CHECK_VALUES", raising=False)
    assert check_values(torch.zeros(3, dtype=torch.long))
    assert not check_values(on_device)
    monkeypatch.setenv("FASTVAE_CHECK_VALUES", "1")
    assert check_values(on_device)
