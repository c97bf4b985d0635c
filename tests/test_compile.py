"""torch.compile keeps fastvae's kernels: the Triton ops and the compiled `_C` ops are custom ops with fakes and
autograd, and the backend is chosen when a graph is traced (fastvae.backend), never from an earlier eager call."""
import pytest
import torch

from fastvae import backend
from fastvae import functional as F
from fastvae.models import TextVAE
from fastvae.models.config import ModelConfig

TRITON_OPS = ("fastvae.reparameterize_triton", "fastvae.free_bits_kl_triton", "fastvae.sample_and_kl_triton",
              "fastvae.gaussian_log_prob_triton", "fastvae.mutual_information_triton")


class GraphRecorder:
    """A torch.compile backend that runs the graphs as they are (through aot_eager, so backward graphs are
    traced too) and keeps every node target of the forward and backward graphs."""

    def __init__(self):
        self.targets = []

    def _keep(self, graph_module, example_inputs):
        self.targets.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module

    def __call__(self, graph_module, example_inputs):
        from torch._dynamo.backends.common import aot_autograd

        from functorch.compile import make_boxed_func

        def keep(gm, example):
            self._keep(gm, example)
            return make_boxed_func(gm.forward)

        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(graph_module, example_inputs)

    def holds(self, name: str) -> bool:
        return any(target.startswith(name + ".") for target in self.targets)


def latent_terms(mu, logvar, eps):
    z, kl_loss, kl_dim = F.sample_and_kl(mu, logvar, 3, 0.4, "dim", eps=eps)
    log_q = F.gaussian_log_prob(z, mu, logvar)
    log_p = F.standard_normal_log_prob(z)
    z2 = F.reparameterize(mu, logvar)
    return kl_loss + F.free_bits_kl(mu, logvar, 0.3, "batch") + (log_q - log_p).mean() + z2.square().mean(), kl_dim


def inputs(B=6, D=5, K=3):
    mu = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    logvar = (0.5 * torch.randn(B, D, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(B, K, D, dtype=torch.float64)
    return mu, logvar, eps


def run_with_grads(fn, mu, logvar, eps):
    torch.manual_seed(7)  # reparameterize draws its own noise
    mu, logvar = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
    loss, kl_dim = fn(mu, logvar, eps)
    loss.backward()
    return loss.detach(), kl_dim, mu.grad, logvar.grad


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("requested", ["auto", pytest.param("triton", marks=pytest.mark.triton)])
def test_compiled_latent_ops_equal_eager_and_keep_the_chosen_kernels(monkeypatch, requested):
    monkeypatch.setenv("FASTVAE_BACKEND", requested)
    mu, logvar, eps = inputs()
    recorder = GraphRecorder()
    compiled = torch.compile(latent_terms, backend=recorder, fullgraph=True)
    got = run_with_grads(compiled, mu, logvar, eps)
    want = run_with_grads(latent_terms, mu, logvar, eps)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    triton_in_graph = {name for name in TRITON_OPS if recorder.holds(name)}
    if requested == "triton":  # forward and backward kernels are graph nodes
        assert triton_in_graph == set(TRITON_OPS) - {"fastvae.mutual_information_triton"}
        for name in ("reparameterize", "free_bits_kl", "sample_and_kl", "gaussian_log_prob"):
            assert recorder.holds(f"fastvae.{name}_triton_backward"), name
    else:  # CPU tensors: the references, traced into plain aten ops
        assert not triton_in_graph


@pytest.mark.triton
def test_compiled_graph_launches_the_triton_kernels(monkeypatch):
    """Not only in the graph: running the compiled function calls the Triton launchers (counted)."""
    from fastvae.kernels import mutual_information as M
    from fastvae.kernels import sample_and_kl as S

    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    calls = {"fwd": 0, "bwd": 0, "mi": 0}
    real = S.sample_and_kl_fwd, S.sample_and_kl_bwd, M.mutual_information_fwd

    def counting(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(S, "sample_and_kl_fwd", counting("fwd", real[0]))
    monkeypatch.setattr(S, "sample_and_kl_bwd", counting("bwd", real[1]))
    monkeypatch.setattr(M, "mutual_information_fwd", counting("mi", real[2]))

    def step(mu, logvar, eps):
        z, loss, _ = F.sample_and_kl(mu, logvar, 1, 0.0, "none", eps=eps)
        with torch.no_grad():
            mi = F.mutual_information(mu.detach(), logvar.detach(), z.detach().squeeze(1))
        return loss + z.sum(), mi

    mu, logvar, _ = inputs()
    eps = torch.randn(6, 1, 5, dtype=torch.float64)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        loss, mi = compiled(mu, logvar, eps)
        loss.backward()
    assert calls == {"fwd": 2, "bwd": 2, "mi": 2}
    eager_loss, eager_mi = step(mu, logvar, eps)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(mi, eager_mi)


@pytest.mark.triton
def test_the_choice_is_made_when_tracing_not_taken_from_earlier_eager_calls(monkeypatch):
    mu, logvar, eps = inputs()
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    latent_terms(mu, logvar, eps)  # eager calls on the reference first
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    recorder = GraphRecorder()
    torch.compile(latent_terms, backend=recorder, fullgraph=True)(mu, logvar, eps)
    assert recorder.holds("fastvae.sample_and_kl_triton")


def test_an_unavailable_backend_fails_the_trace_with_its_message(monkeypatch):
    monkeypatch.setattr(backend, "_load_compiled_core", lambda: (None, ImportError("no module _C")))
    monkeypatch.setenv("FASTVAE_BACKEND", "cpp")
    from fastvae.ops.lstm_cell import lstm_cell

    gates, c = torch.randn(2, 8), torch.randn(2, 2)
    with pytest.raises(Exception, match="pip install --no-build-isolation"):
        torch.compile(lstm_cell, backend="eager", fullgraph=True)(gates, c)


@pytest.mark.parametrize("requested", ["auto", pytest.param("triton", marks=pytest.mark.triton)])
def test_compiled_vae_step_holds_the_compiled_core_and_triton_ops(monkeypatch, requested):
    """A whole training step's loss (encoder, fused sample + KL, the decoder's recurrence and fused output
    layer) compiles into graphs that call the `_C` ops and, with the Triton backend, the Triton ops, and its
    gradients equal the eager step's."""
    monkeypatch.setenv("FASTVAE_BACKEND", requested)
    torch.manual_seed(0)
    model = TextVAE(23, ModelConfig("tiny", emb_dim=8, enc_hidden=12, dec_hidden=12, latent_dim=4, batch_size=5,
                                    dropout_in=0.0, dropout_out=0.0))
    tokens = torch.randint(3, 23, (5, 7))
    tokens[:, 0] = 1
    lengths = torch.tensor([7, 7, 6, 5, 3])
    eps = torch.randn(5, 1, 4)

    def step(tokens, lengths, eps):
        mu, logvar = model.encode(tokens, lengths)
        z, kl, _ = F.sample_and_kl(mu, logvar, 1, 1.0, "dim", eps=eps)
        rec, _ = model.reconstruction_loss(tokens, lengths, z.squeeze(1), scale=1.0 / tokens.shape[0])
        return rec + 0.5 * kl

    def grads(fn):
        model.zero_grad()
        loss = fn(tokens, lengths, eps)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    want = grads(step)
    recorder = GraphRecorder()
    got = grads(torch.compile(step, backend=recorder))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    if backend.cpp_available("cpu"):
        assert recorder.holds("fastvae.lstm_sequence_forward")
        assert recorder.holds("fastvae.linear_cross_entropy_forward")
    assert recorder.holds("fastvae.sample_and_kl_triton") == (requested == "triton")


@pytest.mark.triton
@pytest.mark.parametrize("op, args", [
    ("reparameterize_triton", lambda mu, lv, eps: (mu, lv, eps)),
    ("free_bits_kl_triton", lambda mu, lv, eps: (mu, lv, 0.4, "sentence")),
    ("sample_and_kl_triton", lambda mu, lv, eps: (mu, lv, eps, 0.4, "kingma")),
    ("gaussian_log_prob_triton", lambda mu, lv, eps: (eps.detach().requires_grad_(), mu, lv)),
    ("gaussian_log_prob_triton", lambda mu, lv, eps: (eps.detach().requires_grad_(), None, None)),
    ("mutual_information_triton", lambda mu, lv, eps: (eps[:, 0].detach(), mu.detach(), lv.detach(), 4)),
])
def test_triton_custom_ops_pass_opcheck(op, args):
    from fastvae.kernels import gaussian_log_prob, kl_free_bits, mutual_information, reparameterize, \
        sample_and_kl  # noqa: F401  registers the ops

    mu, logvar, eps = inputs()
    torch.library.opcheck(getattr(torch.ops.fastvae, op).default, args(mu, logvar, eps),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
