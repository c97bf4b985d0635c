"""Data-parallel training on this CPU: 2 processes with gloo (torch.multiprocessing spawn).

- the primitives of fastvae.training.distributed (row-weighted gradient all-reduce with frozen,
  unused and empty-shard cases, sums, broadcast, gather in the split's order, evaluation shards);
- `vae` and `aggressive` trained by 2 ranks equal a single-process run with the same global batch.
  Tolerance: dropout 0 (dropout masks are drawn per shard: equal in distribution only) and the
  reparameterisation noise drawn for the global batch, so the only differences are float
  summation orders (per-shard means, the all-reduce): parameters agree to atol 2e-5 + rtol 1e-4
  (measured: 4e-7 for vae at lr 1, 3e-8 for aggressive at lr 0.2).
"""
import math
import os
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from fastvae.training import distributed as D


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank, world, port, fn, args, out_dir):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)  # 2 cores, 2 ranks
    ctx = D.init_distributed("cpu", timeout_s=120)  # a failing rank must not hang the suite
    try:
        result = fn(ctx, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        D.shutdown(ctx, wait=False)
        raise
    D.shutdown(ctx)


def run_ranks(fn, *args, world=2):
    """Runs fn(ctx, *args) on `world` gloo ranks; returns the list of their results."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world, _free_port(), fn, args, out_dir), nprocs=world, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


# ----------------------------------------------------------------------------- primitives
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(3, 4)
        self.dec = torch.nn.Linear(4, 2)
        self.unused = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


def _grads(net):
    return {name: (None if p.grad is None else p.grad.clone()) for name, p in net.named_parameters()}


def _primitives_worker(ctx, seed):
    torch.manual_seed(seed)
    net = _Net().double()
    if ctx.rank == 1:  # different starting points: broadcast must fix that
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    D.broadcast_parameters(net, ctx)
    out = {"in_sync": D.parameters_in_sync(net, ctx)}
    gen = torch.Generator().manual_seed(seed + 1)
    cases = {}
    for name, rows, freeze_dec in (("uneven", 5, False), ("frozen_decoder", 7, True), ("empty_shard", 1, False)):
        x = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(rows, 2, generator=gen, dtype=torch.float64)
        for p in net.dec.parameters():
            p.requires_grad_(not freeze_dec)
        # the single-process gradient of the global batch's mean loss
        net.zero_grad(set_to_none=True)
        ((net(x) - y) ** 2).sum(1).mean().backward()
        reference = _grads(net)
        # this rank's shard: mean over its rows, then the row-weighted all-reduce
        net.zero_grad(set_to_none=True)
        rows_here = ctx.rows(rows)
        xs, ys = x[rows_here], y[rows_here]
        if xs.shape[0] > 0:
            ((net(xs) - ys) ** 2).sum(1).mean().backward()
        extras = D.allreduce_gradients(net.parameters(), ctx, local_rows=xs.shape[0], global_rows=rows,
                                       extras={"loss_sum": torch.tensor(0.5 * (ctx.rank + 1)),
                                               "words": torch.tensor(3 + ctx.rank), "sentences": xs.shape[0]})
        cases[name] = {"reference": reference, "synced": _grads(net), "local_rows": xs.shape[0], "extras": extras}
        for p in net.dec.parameters():
            p.requires_grad_(True)
    out["cases"] = cases
    out["sums"] = D.allreduce_sums({"loss": torch.tensor(1.5 * (ctx.rank + 1)), "count": ctx.rank + 2,
                                    "x": 0.25}, ctx)
    out["decision"] = D.broadcast_decision(ctx.rank == 0, ctx)
    out["agree_all"] = D.all_agree(True, ctx)
    out["agree_one"] = D.all_agree(ctx.rank == 0, ctx)
    out["max"] = D.allreduce_max(float(ctx.rank) * 3.0, ctx)
    # uneven rows scattered over the split, gathered back in its order
    total = 11
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed + 2))
    mine = perm[:7] if ctx.rank == 0 else perm[7:]  # deliberately not the balanced split
    values = torch.stack([mine.double(), -mine.double()], 1)
    out["gathered"] = D.gather_rows_in_order(values, mine, total, ctx)
    out["gathered_plain"] = D.gather_rows(values, ctx)
    # evaluation shards
    lengths = torch.randint(3, 7, (53,), generator=torch.Generator().manual_seed(seed + 3)).tolist()
    out["eval_shard"] = D.bucket_shard_indices(lengths, 4, ctx)
    out["lengths"] = lengths
    noise_gen = torch.Generator().manual_seed(seed + 4)
    out["noise"] = D.global_noise(5, 3, ctx, generator=noise_gen)
    return out


def _bucket_batches(indices, lengths, batch_size):
    """The reference's same-length batches (stable order) of the given sentence indices."""
    batches, current = [], []
    for i in sorted(indices, key=lambda i: (lengths[i], i)):
        if current and (lengths[current[-1]] != lengths[i] or len(current) == batch_size):
            batches.append(tuple(current))
            current = []
        current.append(i)
    if current:
        batches.append(tuple(current))
    return batches


def test_distributed_primitives(fresh_seed):
    results = run_ranks(_primitives_worker, fresh_seed)
    for out in results:
        assert out["in_sync"]
        for name, case in out["cases"].items():
            for pname, ref in case["reference"].items():
                got = case["synced"][pname]
                if ref is None:  # frozen or unused: no gradient on any rank stays None
                    assert got is None, (name, pname)
                else:
                    assert got is not None, (name, pname)
                    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12, msg=f"{name} {pname}")
        assert out["cases"]["empty_shard"]["synced"]["unused.weight"] is None
        for name, case in out["cases"].items():  # step statistics summed in the same all-reduce
            extras = case["extras"]
            assert extras["loss_sum"].dtype == torch.float32 and float(extras["loss_sum"]) == 1.5
            assert extras["words"].dtype == torch.long and int(extras["words"]) == 7
            assert extras["sentences"] == {"uneven": 5, "frozen_decoder": 7, "empty_shard": 1}[name]
        assert out["sums"] == {"loss": torch.tensor(4.5), "count": 5, "x": 0.5}
        assert isinstance(out["sums"]["count"], int)
        assert out["decision"] is True and out["agree_all"] is True and out["agree_one"] is False
        assert out["max"] == 3.0
        expected = torch.stack([torch.arange(11).double(), -torch.arange(11).double()], 1)
        torch.testing.assert_close(out["gathered"], expected, rtol=0, atol=0)
        assert out["gathered_plain"].shape == (11, 2)
    assert [r["cases"]["empty_shard"]["local_rows"] for r in results] == [0, 1]
    # the two noise slices are the single-process draw
    full = torch.randn((5, 1, 3), generator=torch.Generator().manual_seed(fresh_seed + 4))
    torch.testing.assert_close(torch.cat([r["noise"] for r in results]), full, rtol=0, atol=0)
    # evaluation shards: a partition, and the batches each rank forms are those of one process
    lengths = results[0]["lengths"]
    shards = [r["eval_shard"].tolist() for r in results]
    assert sorted(shards[0] + shards[1]) == list(range(len(lengths)))
    assert abs(len(shards[0]) - len(shards[1])) <= 4 + 1
    single = _bucket_batches(range(len(lengths)), lengths, 4)
    assert _bucket_batches(shards[0], lengths, 4) + _bucket_batches(shards[1], lengths, 4) == single


def test_single_process_context_is_inert():
    ctx = D.init_distributed("cpu", env={})
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    assert D.shard_rows(5, 0, 1) == slice(0, 5)
    assert D.allreduce_sums({"a": 2}, ctx) == {"a": 2}
    assert D.broadcast_decision(False, ctx) is False
    x = torch.randn(3, 2)
    assert D.gather_rows(x, ctx) is x


def test_shard_rows_partition():
    for n in range(0, 9):
        for world in range(1, 5):
            parts = [D.shard_rows(n, r, world) for r in range(world)]
            covered = [i for s in parts for i in range(n)[s]]
            assert covered == list(range(n))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "outside"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not an integer"),
    ({"RANK": "1"}, "single process has rank 0"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR is not set"),
])
def test_bad_launch_environment(env, match):
    with pytest.raises(ValueError, match=match):
        D.init_distributed("cpu", env=env)


def test_bad_backend_choice():
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        D.init_distributed("cpu", backend="nccl", env=env)
    with pytest.raises(ValueError, match="unknown distributed backend"):
        D.init_distributed("cpu", backend="mpi", env=env)


# ----------------------------------------------------------------------------- evaluate over 2 ranks
def _z_free_decoder_vae(vocab_size):
    """A VAE whose posterior varies with the sentence but whose decoder ignores z: rec, kl and the posterior rows
    do not depend on the noise, so 2 ranks and one process must agree on them up to summation order."""
    from fastvae.models import TextVAE

    torch.manual_seed(0)
    model = TextVAE(vocab_size, "tiny").eval()
    for p in model.parameters():
        torch.nn.init.uniform_(p, -0.3, 0.3)
    with torch.no_grad():
        model.decoder.latent_to_cell.weight.zero_()
        model.decoder.weight_ih_l0[:, model.decoder.emb_dim:] = 0
    return model


def _evaluation_cases():
    from fastvae.data import TextDataset, grammar_corpus
    from fastvae.models import LSTMLM

    corpus = grammar_corpus(seed=1, n_train=60, n_valid=41, n_test=8)
    vae = _z_free_decoder_vae(len(corpus.vocab))
    torch.manual_seed(1)
    lm = LSTMLM(len(corpus.vocab), "tiny").eval()
    length = len(corpus.valid.sentences[0])
    one_batch = TextDataset([s for s in corpus.valid.sentences if len(s) == length][:3], name="one batch")
    return {"all": (vae, corpus.valid, None, 0), "ppl only": (vae, corpus.valid, ["ppl"], 3),
            "lm": (lm, corpus.valid, None, 3), "lm ppl only": (lm, corpus.valid, ["ppl"], 3),
            "an empty shard": (vae, one_batch, None, 0)}  # one bucket batch: rank 0 evaluates nothing


def _evaluate_worker(ctx, seed):
    from fastvae.evaluation import evaluate

    out = {}
    for name, (model, data, metrics, iw_samples) in _evaluation_cases().items():
        options = dict(batch_size=8, iw_samples=iw_samples, metrics=metrics)
        out[name] = evaluate(model, data, generator=torch.Generator().manual_seed(seed), distributed=ctx, **options)
        again = D.distributed_evaluate(model, data, ctx, generator=torch.Generator().manual_seed(seed), **options)
        out[name + " (old name)"] = again
    return out


def test_two_rank_evaluate_equals_single_process_evaluate(fresh_seed):
    """`evaluate(..., distributed=ctx)` on 2 ranks gives the single-process `evaluate`'s dict: the same keys (one
    metric list, one ppl rule), the same per-sentence means up to summation order, the same AU, and MI / per-batch MI
    of the same posterior rows, drawn from generators seeded by one draw of the caller's generator."""
    from fastvae import functional as F
    from fastvae.evaluation import evaluate, per_batch_mutual_information, posterior_stats

    ranks = run_ranks(_evaluate_worker, fresh_seed)
    assert ranks[0] == ranks[1]
    for name, (model, data, metrics, iw_samples) in _evaluation_cases().items():
        got = ranks[0][name]
        assert ranks[0][name + " (old name)"] == got, name
        single = evaluate(model, data, batch_size=8, iw_samples=iw_samples, metrics=metrics,
                          generator=torch.Generator().manual_seed(fresh_seed))
        assert set(got) == set(single), name
        for key, value in single.items():
            if key in ("mi", "mi_batch"):
                continue  # other noise by design; checked below
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            elif key == "au_var":
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), name
            else:
                assert got[key] == value, (name, key)
        if "mi" in got:
            mu, logvar = posterior_stats(model, data, batch_size=8, batch_mode="bucket")
            draw = torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(fresh_seed))
            seed = int(draw.item())
            mi = F.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(seed))
            mi_batch = per_batch_mutual_information(mu, logvar, [len(s) for s in data.sentences], 32,
                                                    generator=torch.Generator().manual_seed(seed + 1))
            assert got["mi"] == pytest.approx(float(mi), rel=1e-5, abs=1e-5), name
            assert got["mi_batch"] == pytest.approx(float(mi_batch), rel=1e-5, abs=1e-5), name


# ----------------------------------------------------------------------------- the trainer on 2 ranks
CORPUS = dict(seed=0, n_train=160, n_valid=40, n_test=24)
TRAIN = dict(progress=False, verbose=False, iw_samples=2, eval_batch_size=16, batch_size=16, epochs=1, seed=7)
# lr 0.2 for aggressive: at lr 1.0 its ~80 encoder sub-steps amplify rounding differences chaotically
# (measured: 1e-2 after 78 sub-steps, with identical inner-loop decisions); at 0.2 they agree to ~3e-8
CASES = [("vae", {"kl_start": 0.2, "warm_up": 1.0}),
         ("aggressive", {"max_inner_steps": 6, "inner_window": 2, "lr": 0.2}),
         ("pretrain-fb", {"target_kl": 1.0})]  # the decoder re-initialisation is rank 0's, broadcast
PARAM_TOL = dict(atol=2e-5, rtol=1e-4)


def _no_dropout_config():
    import dataclasses

    from fastvae.models import get_config

    return dataclasses.replace(get_config("tiny"), dropout_in=0.0, dropout_out=0.0)


def _train(recipe, options, ctx=None):
    from fastvae.data.builtin import grammar_corpus
    from fastvae.training import Trainer

    corpus = grammar_corpus(**CORPUS)
    trainer = Trainer(None, corpus, recipe=recipe, config=_no_dropout_config(), distributed=ctx,
                      **{**TRAIN, **options})
    test = trainer.fit()
    return trainer, corpus, test


def _trainer_worker(ctx, seed):
    from fastvae.data import make_batches  # noqa: F401  (imported before timing-sensitive work)

    out = {}
    for recipe, options in CASES:
        trainer, corpus, test = _train(recipe, options, ctx)
        out[recipe] = {"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                       "in_sync": D.parameters_in_sync(trainer.model, ctx), "test": test,
                       "train": [r for r in trainer.history if r["split"] == "train"],
                       "inner_steps": getattr(trainer.phase.policy, "inner_steps", 0)}
    # whole-split evaluation over the union of both ranks' rows
    trainer.model.eval()
    gen = torch.Generator().manual_seed(seed)
    out["eval"] = D.distributed_evaluate(trainer.model, corpus.valid, ctx, batch_size=8, iw_samples=3,
                                         generator=gen)
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_process(fresh_seed):
    from fastvae import functional as F
    from fastvae.evaluation import per_batch_mutual_information, posterior_stats

    ranks = run_ranks(_trainer_worker, fresh_seed)
    for recipe, options in CASES:
        trainer, corpus, _ = _train(recipe, options)
        single = trainer.model.state_dict()
        for rank in ranks:
            assert rank[recipe]["in_sync"]
            for name, value in single.items():
                torch.testing.assert_close(rank[recipe]["params"][name], value, **PARAM_TOL,
                                           msg=lambda m: f"{recipe} {name}: {m}")
        # the reduced training metrics are the global batch's (sums and counts, not means of means)
        one = [r for r in trainer.history if r["split"] == "train"][0]
        two = ranks[0][recipe]["train"][0]
        for key in ("loss", "rec", "kl"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-4), (recipe, key)
        if recipe == "aggressive":  # the inner loop's stop rule read the same global window losses
            assert ranks[0][recipe]["inner_steps"] == ranks[1][recipe]["inner_steps"] \
                == trainer.phase.policy.inner_steps
            assert two["aggressive"] == one["aggressive"]
    # evaluation: identical on both ranks; whole-set statistics use the union of rows in split order
    assert ranks[0]["eval"] == ranks[1]["eval"]
    result = ranks[0]["eval"]
    model = trainer.model.eval()  # the model the ranks evaluated: the last case's, with rank 0's weights
    model.load_state_dict(ranks[0][CASES[-1][0]]["params"])
    mu, logvar = posterior_stats(model, corpus.valid, batch_size=8)
    assert result["num_sentences"] == len(corpus.valid) and result["num_tokens"] == corpus.valid.num_tokens()
    seed = int(torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(fresh_seed)).item())
    expected_mi = F.mutual_information(mu.float(), logvar.float(), generator=torch.Generator().manual_seed(seed))
    assert result["mi"] == pytest.approx(float(expected_mi), rel=1e-5, abs=1e-5)
    count, var = F.active_units(mu.float())
    assert result["au"] == count
    kl = F.kl_per_dim(mu.float(), logvar.float()).sum(1).mean()
    assert result["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-4)
    lengths = [len(s) for s in corpus.valid.sentences]
    expected_mi_batch = per_batch_mutual_information(mu.float(), logvar.float(), lengths, 32,
                                                     generator=torch.Generator().manual_seed(seed + 1))
    assert result["mi_batch"] == pytest.approx(float(expected_mi_batch), rel=1e-5, abs=1e-5)
    assert all(math.isfinite(result[k]) for k in ("rec", "elbo", "nll", "ppl"))


@pytest.mark.slow
def test_torchrun_cli_two_ranks_rank0_writes(tmp_path):
    """`torchrun --nproc_per_node=2 -m fastvae train`: one report, one run directory, written once."""
    import json
    import shutil
    import subprocess
    import sys

    from fastvae.data.builtin import grammar_corpus, write_corpus

    data, out = tmp_path / "data", tmp_path / "run"
    write_corpus(grammar_corpus(**CORPUS), str(data))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a worker that crashes natively prints its Python stacks
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastvae", "train", "--data", str(data), "--config", "tiny", "--recipe", "aggressive",
               "--max-inner-steps", "4", "--epochs", "1", "--batch-size", "16", "--iw-samples", "2",
               "--checkpoint-every", "3", "--out", str(out), "--no-progress", "--json", "--examples", "0"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    # torchrun --standalone picks a free port and releases it before the workers bind it; on a busy machine
    # another process can take it in between (seen once in ~10 full-suite runs). That, and only that, is retried.
    network = ("DistNetworkError", "EADDRINUSE", "Address already in use", "RendezvousConnectionError",
               "RendezvousTimeoutError", "Connection refused", "Connection reset")
    if proc.returncode != 0 and any(word in proc.stderr for word in network):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    reports = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # rank 0 only
    assert json.loads(reports[0])["out_dir"] == str(out)
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "training.png"} <= set(os.listdir(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "valid", "test"]  # not once per rank
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["rank_torch"]) == 2


class _Crash(Exception):
    pass


def _resume_worker(ctx, root):
    """2 ranks with dropout on: a run that dies mid-epoch and resumes equals the uninterrupted one."""
    from fastvae.data.builtin import grammar_corpus
    from fastvae.training import Trainer

    corpus = grammar_corpus(**CORPUS)
    opts = dict(TRAIN, epochs=2, checkpoint_every=2, recipe="vae", config="tiny", distributed=ctx)
    full = Trainer(None, corpus, out_dir=os.path.join(root, "full"), **opts)
    full.fit()
    crashing = Trainer(None, corpus, out_dir=os.path.join(root, "crash"), **opts)
    step = crashing.phase.policy.step
    crash_at = len(crashing._epoch_batches()) + 3  # in the second epoch

    def dies(trainer, batch, kl_weight):
        if trainer.global_step == crash_at:  # every rank at the same step: nobody waits in a collective
            raise _Crash()
        return step(trainer, batch, kl_weight)

    crashing.phase.policy.step = dies
    try:
        crashing.fit()
    except _Crash:
        pass
    resumed = Trainer(None, corpus, out_dir=os.path.join(root, "crash"), **opts)
    resumed.fit(resume=os.path.join(root, "crash"))
    return {"same": all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                          resumed.model.state_dict().values())),
            "test_full": full.test_metrics, "test_resumed": resumed.test_metrics}


@pytest.mark.slow
def test_two_rank_resume_is_exact(tmp_path):
    ranks = run_ranks(_resume_worker, str(tmp_path))
    for out in ranks:
        assert out["same"]  # bitwise: each rank's dropout stream is restored from the checkpoint
        assert out["test_full"] == out["test_resumed"]
