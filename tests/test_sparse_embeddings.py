"""Row-sparse embedding gradients (plain SGD, one process): the same update as dense gradients, with clipping."""
import pytest
import torch

from fastvae.data import BUILTIN_CORPORA
from fastvae.training import Trainer
from fastvae.training.optim import clip_grad_norm, sparse_embedding_gradients_apply

FAST = dict(config="tiny", progress=False, verbose=False, iw_samples=4, eval_batch_size=64)


@pytest.fixture(scope="module")
def corpus():
    return BUILTIN_CORPORA["grammar"](seed=3, n_train=160, n_valid=40, n_test=24)


def embeddings(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]


@pytest.mark.parametrize("recipe,clip", [("vae", 5.0), ("vae", 1e-3), ("lm", 5.0), ("aggressive", 5.0)])
def test_sparse_sgd_steps_equal_dense_steps(corpus, recipe, clip):
    """Sparse embeddings on (the trainer's choice) vs forced dense: the same parameters after a few steps, also
    when the tiny clip norm scales every gradient; the embedding gradients really were sparse."""
    options = {"max_inner_steps": 3, "inner_window": 3} if recipe == "aggressive" else {}
    runs = []
    for sparse in (True, False):
        trainer = Trainer(None, corpus, recipe=recipe, epochs=1, seed=7, clip=clip, **FAST, **options)
        assert all(m.sparse for m in embeddings(trainer.model))
        for module in embeddings(trainer.model):
            module.sparse = sparse
        trainer._start_phase(fresh=True)
        trainer.model.train()
        torch.manual_seed(11)  # the same dropout masks in both runs
        seen_sparse = []
        original = trainer.backward_and_step

        def spy(result, **kw):
            original(result, **kw)
            seen_sparse.extend(m.weight.grad.is_sparse for m in embeddings(trainer.model) if m.weight.grad is not None)

        trainer.backward_and_step = spy
        for position in range(3):
            trainer.phase.policy.step(trainer, trainer._batches[position], 0.5)
        assert all(flag == sparse for flag in seen_sparse) and seen_sparse
        runs.append([p.detach().clone() for p in trainer.model.parameters()])
    for a, b in zip(*runs):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()


def test_dense_where_the_update_needs_it(corpus):
    assert sparse_embedding_gradients_apply("sgd", 0.0, distributed=False)
    assert not sparse_embedding_gradients_apply("sgd", 0.9, distributed=False)  # momentum buffers are dense
    assert not sparse_embedding_gradients_apply("adam", 0.0, distributed=False)
    assert not sparse_embedding_gradients_apply("sgd", 0.0, distributed=True)  # the all-reduce is dense
    trainer = Trainer(None, corpus, recipe="vae", epochs=1, optimizer="adam", **FAST)
    assert not any(m.sparse for m in embeddings(trainer.model))


def test_clip_grad_norm_with_sparse_gradients_equals_dense():
    torch.manual_seed(0)
    for max_norm in (1e-2, 1e3):
        table = torch.nn.Parameter(torch.randn(20, 4))
        other = torch.nn.Parameter(torch.randn(3, 3))
        rows = torch.tensor([1, 5, 5, 19, 1])  # duplicates: summed, as in the dense gradient
        values = torch.randn(5, 4)
        table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (20, 4), check_invariants=True)
        other.grad = torch.randn(3, 3)
        dense_table, dense_other = table.detach().clone().requires_grad_(), other.detach().clone().requires_grad_()
        dense_table.grad = table.grad.to_dense()
        dense_other.grad = other.grad.clone()
        total = clip_grad_norm([table, other], max_norm)
        want = torch.nn.utils.clip_grad_norm_([dense_table, dense_other], max_norm)
        assert torch.allclose(total, want, rtol=1e-6)
        assert torch.allclose(table.grad.to_dense(), dense_table.grad, rtol=1e-6, atol=1e-7)
        assert torch.allclose(other.grad, dense_other.grad, rtol=1e-6, atol=1e-7)
