"""Data-parallel training with torch.distributed: one process per device, launched by torchrun.

    torchrun --nproc_per_node=2 -m fastvae train --recipe aggressive ...
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 -m fastvae train ...

Semantics (what a run with N ranks computes):
- Same global batch as one process. Every rank builds the same batch list (same seed) and takes
  its contiguous slice of rows of every batch (`shard_batch`). A step's gradient is the
  row-weighted average of the ranks' gradients (`allreduce_gradients`), i.e. exactly the gradient
  of the global batch's mean loss, so clipping and both optimisers see what one process sees.
  Differences from a single process are float summation order only, plus the per-rank randomness
  of dropout (masks are drawn per shard: equal in distribution, not bitwise). Reparameterisation
  noise is drawn for the whole global batch from a generator every rank keeps in step
  (`global_noise`), so with dropout 0 a 2-rank run follows the single-process run to rounding.
- Free-bits modes that look at the whole batch (`batch`, `kingma`) are evaluated on each rank's
  shard (like unsynchronised batch norm); `none`, `sentence` and `dim` are per row and exact.
- Gradients are synchronised explicitly, not by `DistributedDataParallel`: the aggressive
  recipe's encoder-only sub-steps freeze the decoder (no gradient there on any rank), a shard may
  be empty when a bucket has fewer sentences than there are ranks, and the encoder and decoder
  have separate optimisers. One packed all-reduce per step carries every gradient plus a
  "has a gradient" flag per parameter, so a parameter that got no gradient on any rank keeps
  `grad=None` (the optimiser then skips it exactly as in one process).
- Decisions made from data (the aggressive inner loop's window rule, the MI stop, NaN/inf, plateau
  decay) are computed from globally reduced sums, or on rank 0 and broadcast, so every rank
  takes the same branch: a rank that branched alone would deadlock the next collective.
- Evaluation (`distributed_evaluate`): the split is cut into contiguous, length-sorted shards at
  the reference's bucket-batch boundaries, so each evaluation batch is the one a single process
  would form; sums (rec, kl, IW-NLL, per-batch MI weighted by batch size, tokens) are all-reduced,
  and the posterior rows (mu, logvar, labels) of all ranks are gathered back into the split's
  order: whole-set MI, AU and the linear probe use the global aggregate posterior.
- Only rank 0 writes (checkpoints, metrics.jsonl, plots, progress, prints): `ctx.is_main`.
NCCL on CUDA devices (rank r uses cuda:LOCAL_RANK), gloo on CPUs.
"""
from __future__ import annotations

import copy
import datetime
import os
from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job. `world_size == 1`: a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" | "gloo" | None (single process)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of `n` rows (sizes differ by at most one)."""
        return shard_rows(n, self.rank, self.world_size)


SINGLE = DistContext()


def _env_int(name: str, env) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun; "
                         f"launch with `torchrun --nproc_per_node=N -m fastvae train ...`)") from None


def launched_by_torchrun(env=None) -> bool:
    env = os.environ if env is None else env
    return (_env_int("WORLD_SIZE", env) or 1) > 1


def init_distributed(device: str | torch.device = "cpu", *, backend: str | None = None, env=None,
                     timeout_s: float = 1800.0) -> DistContext:
    """The context of this process, joining the process group when torchrun started several.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/MASTER_PORT through the env:// rendezvous).
    Without them (or WORLD_SIZE=1) returns a single-process context and touches nothing.
    `device`: "cpu" (gloo) or "cuda" (NCCL; rank r uses cuda:LOCAL_RANK). `backend` overrides the
    choice (e.g. gloo on CUDA for debugging). A process group that already exists is reused.
    """
    env = os.environ if env is None else env
    device = torch.device(device)
    world = _env_int("WORLD_SIZE", env)
    rank = _env_int("RANK", env)
    local_rank = _env_int("LOCAL_RANK", env)
    if world is None or world == 1:
        if rank not in (None, 0):
            raise ValueError(f"RANK={rank} is set but WORLD_SIZE is {world}: a single process has rank 0; "
                             f"launch several processes with torchrun")
        if device.type == "cuda" and device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        return DistContext(device=device)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if rank is None:
        raise ValueError("WORLD_SIZE > 1 but RANK is not set: launch with torchrun, which sets RANK, "
                         "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    local_rank = rank if local_rank is None else local_rank
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not {device.type!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but this torch has no usable CUDA device; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has only {torch.cuda.device_count()} CUDA "
                             f"device(s): use --nproc_per_node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    chosen = backend or ("nccl" if device.type == "cuda" else "gloo")
    if chosen not in ("nccl", "gloo"):
        raise ValueError(f"unknown distributed backend {chosen!r}: expected nccl or gloo")
    if chosen == "nccl" and device.type != "cuda":
        raise ValueError("the nccl backend needs CUDA devices; use gloo on CPUs")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"a process group already exists with rank {dist.get_rank()}/"
                               f"{dist.get_world_size()}, but the environment says {rank}/{world}")
        chosen = dist.get_backend()
    else:
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(key):
                raise ValueError(f"WORLD_SIZE > 1 but {key} is not set: launch with torchrun (or set "
                                 f"{', '.join(_ENV_KEYS)})")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(chosen, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=chosen, device=device)


def shutdown(ctx: DistContext, *, wait: bool = True) -> None:
    """Leaves the process group (a no-op for a single process).

    `wait=True` (a normal end): a barrier first, so no rank tears the group down while another
    (rank 0 writing its last files) still uses it. After an error, `wait=False` leaves at once."""
    if ctx.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# ----------------------------------------------------------------------------- sharding
def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """Rows [n*rank//W, n*(rank+1)//W): contiguous, balanced, covering 0..n-1 exactly once."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if n < 0:
        raise ValueError(f"row count must be >= 0, got {n}")
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def shard_batch(batch, ctx: DistContext):
    """This rank's rows of a global `fastvae.data.Batch` (the whole batch for a single process).

    Columns are kept (padding beyond a shard's longest sentence is masked like any padding), so
    each row's loss is exactly the one a single process computes. The shard may have 0 rows when
    the batch has fewer rows than there are ranks."""
    if not ctx.enabled:
        return batch
    size = batch.tokens.shape[0]
    rows = ctx.rows(size)
    changes = {}
    names = [f.name for f in fields(batch)]
    for name in names:  # every per-row tensor (tokens, lengths, labels, dataset indices, ...)
        value = getattr(batch, name)
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == size:
            changes[name] = value[rows]
    if "num_target_tokens" in names:
        changes["num_target_tokens"] = int((changes["lengths"] - 1).sum())
    return replace(batch, **changes)


def shard_batches(batches, ctx: DistContext) -> list:
    """Each global batch's row shard for this rank, in the same order (one step per global batch)."""
    return [shard_batch(b, ctx) for b in batches]


def global_noise(global_rows: int, dims: int, ctx: DistContext, *, generator: torch.Generator,
                 nsamples: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """This rank's rows of eps ~ N(0, I) drawn for the whole global batch: [rows, nsamples, dims].

    Every rank draws the full [global_rows, nsamples, dims] tensor from `generator` (kept in step
    on all ranks) and keeps its slice, so the noise of a row does not depend on the world size."""
    device = generator.device if device is None else device
    eps = torch.randn((global_rows, nsamples, dims), generator=generator, dtype=dtype, device=generator.device)
    return eps[ctx.rows(global_rows)].to(device)


# ----------------------------------------------------------------------------- parameters and gradients
def broadcast_parameters(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copies rank `src`'s parameters and buffers to every rank (identical starting points)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def parameters_in_sync(module: torch.nn.Module, ctx: DistContext) -> bool:
    """True when every rank holds bitwise the same parameters (a check for tests and debugging)."""
    if not ctx.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    differs = torch.tensor([float(not torch.equal(flat, reference))], dtype=torch.float64, device=flat.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    return bool(differs.item() == 0)


def allreduce_gradients(params, ctx: DistContext, *, local_rows: int, global_rows: int, extras: dict | None = None):
    """Replaces every parameter's gradient with the global batch's gradient, on every rank.

    Each rank's gradient is that of its shard's mean loss; the global batch's mean-loss gradient
    is sum_r (rows_r / rows) grad_r. Parameters are those in `params` that require a gradient
    (the same list on every rank). Ranks that hold rows produce the same set of gradients (same
    code path); when a shard can be empty (`global_rows < world_size`) a "has a gradient" flag per
    parameter rides along, an empty rank counts zeros, and a parameter that no rank gave a
    gradient keeps `grad=None` (that case reads the flags on the host; otherwise nothing is read).
    `extras`: 0-d tensors (e.g. a step's loss sum and word count) summed in the same all-reduce;
    returns them as a dict of global sums (same dtypes). One collective per call."""
    extras = dict(extras or {})
    if not ctx.enabled:
        return extras
    if global_rows <= 0:
        raise ValueError(f"global_rows must be > 0, got {global_rows}")
    params = [p for p in params if p.requires_grad]
    device = params[0].device if params else (ctx.device if ctx.backend == "nccl" else torch.device("cpu"))
    dtype = torch.float32 if all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params) \
        else torch.float64
    sizes = [p.numel() for p in params]
    n_grads = sum(sizes)
    with_flags = global_rows < ctx.world_size
    n_flags = len(params) if with_flags else 0
    buffer = torch.zeros(n_grads + n_flags + len(extras), dtype=dtype, device=device)
    scale = local_rows / global_rows
    offset = 0
    for i, (p, size) in enumerate(zip(params, sizes)):
        if p.grad is not None:
            if p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported in distributed training")
            buffer[offset:offset + size].copy_(p.grad.reshape(-1)).mul_(scale)
            if with_flags:
                buffer[n_grads + i] = 1.0
        offset += size
    for j, value in enumerate(extras.values()):
        buffer[n_grads + n_flags + j] = value if torch.is_tensor(value) else float(value)
    dist.all_reduce(buffer)
    if with_flags:
        flags = [f > 0 for f in buffer[n_grads:n_grads + n_flags].tolist()]
    else:
        flags = [p.grad is not None for p in params]
    offset = 0
    for p, size, flag in zip(params, sizes, flags):
        if flag:
            synced = buffer[offset:offset + size].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = synced.clone()
            else:
                p.grad.copy_(synced)
        else:
            p.grad = None
        offset += size
    out = {}
    for j, (key, value) in enumerate(extras.items()):
        total = buffer[n_grads + n_flags + j]
        if torch.is_tensor(value):
            out[key] = total.to(dtype=value.dtype, device=value.device)
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = int(round(float(total)))
        else:
            out[key] = float(total)
    return out


# ----------------------------------------------------------------------------- metrics and decisions
def allreduce_sums(values: dict, ctx: DistContext) -> dict:
    """Sums each entry over the ranks (numbers or 0-d tensors); returns the same keys.

    Reduce sums and counts, then divide: never average per-rank means (shards differ in size).
    Integers stay integers; tensors come back as tensors on their device."""
    if not ctx.enabled:
        return dict(values)
    keys = list(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if ctx.backend == "nccl":
        packed = packed.to(ctx.device)
    dist.all_reduce(packed)
    out = {}
    for key, total in zip(keys, packed.tolist()):
        original = values[key]
        if torch.is_tensor(original):
            out[key] = torch.tensor(total, dtype=original.dtype, device=original.device)
        elif isinstance(original, int) and not isinstance(original, bool):
            out[key] = int(round(total))
        else:
            out[key] = total
    return out


def allreduce_max(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Rank `src`'s (picklable) object on every rank, e.g. the MI stop decision or a metrics dict."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's (picklable) object, in rank order, on every rank (e.g. per-rank RNG states)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def main_reads(read, ctx: DistContext):
    """`read()` on rank 0 only (a file other nodes may not see), its result broadcast to every rank.

    An exception on rank 0 is re-raised on every rank (with rank 0's message), so no rank is left
    waiting in a collective while the others stop."""
    if not ctx.enabled:
        return read()
    payload = None
    if ctx.is_main:
        try:
            payload = ("ok", read())
        except Exception as exc:  # noqa: BLE001 - forwarded to every rank below
            payload = ("error", exc)
    status, value = broadcast_object(payload, ctx)
    if status == "error":
        if isinstance(value, (ValueError, FileNotFoundError)):
            raise value
        raise RuntimeError(f"rank 0 failed: {value}") from value
    return value


def broadcast_decision(flag: bool, ctx: DistContext, src: int = 0) -> bool:
    """Rank `src`'s decision on every rank, so all switch together (e.g. aggressive mode off)."""
    return bool(broadcast_object(bool(flag), ctx, src))


def all_agree(flag: bool, ctx: DistContext) -> bool:
    """True on every rank iff `flag` is True on every rank."""
    if not ctx.enabled:
        return bool(flag)
    return allreduce_max(0.0 if flag else 1.0, ctx) == 0.0


def gather_rows(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenation over ranks (rank order) of each rank's [n_r, ...] rows; n_r may differ (or be 0)."""
    if not ctx.enabled:
        return tensor
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    local = tensor.detach().to(device)
    count = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    largest = max(counts)
    padded = torch.zeros((largest,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(tensor.device)


def gather_rows_in_order(tensor: torch.Tensor, indices: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """The union of all ranks' rows placed back at their original positions `indices` (0..total-1)."""
    rows = gather_rows(tensor, ctx)
    where = gather_rows(indices.to(torch.long), ctx).to(rows.device)
    if where.numel() != total or torch.unique(where).numel() != total:
        raise RuntimeError(f"gathered {where.numel()} rows for a split of {total}: the shards do not cover it "
                           f"exactly once")
    out = torch.empty_like(rows)
    out[where] = rows
    return out


# ----------------------------------------------------------------------------- evaluation over shards
def bucket_shard_indices(lengths, batch_size: int, ctx: DistContext) -> torch.Tensor:
    """Sentence indices of this rank's evaluation shard.

    Sentences are ordered by length (stable), the reference's same-length batches of up to
    `batch_size` are formed, and the list of batches is cut into `world_size` contiguous runs of
    about equal sentence counts; each run is re-bucketed by the evaluator into exactly the batches
    one process forms (same sizes, same members), so per-batch quantities are unchanged."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    n = lengths.numel()
    order = torch.sort(lengths, stable=True).indices
    if not ctx.enabled:
        return order
    sorted_lengths = lengths[order].tolist()
    bounds = [0]  # start of every batch in `order`
    for i in range(1, n):
        if sorted_lengths[i] != sorted_lengths[i - 1] or i - bounds[-1] >= batch_size:
            bounds.append(i)
    bounds.append(n)
    starts = bounds[:-1]
    # cut at the batch start closest to rank * n / world
    cuts = [0]
    for r in range(1, ctx.world_size):
        target = n * r / ctx.world_size
        best = min(starts + [n], key=lambda s: (abs(s - target), s))
        cuts.append(max(best, cuts[-1]))
    cuts.append(n)
    return order[cuts[ctx.rank]:cuts[ctx.rank + 1]]


def subset_dataset(dataset, indices):
    """A shallow copy of a `TextDataset` holding only the sentences (and labels) at `indices`."""
    indices = [int(i) for i in indices]
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    part = copy.copy(dataset)
    part.sentences = [dataset.sentences[i] for i in indices]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        part.labels = labels[torch.as_tensor(indices, dtype=torch.long)] if indices else labels[:0]
    return part


_SUMMED = ("rec", "kl", "elbo", "nll")  # per-sentence means in `evaluate`'s result


def distributed_evaluate(model, dataset, ctx: DistContext, *, batch_size: int = 32, iw_samples: int = 500,
                         metrics=None, device="cpu", generator=None, batch_mode: str = "bucket",
                         au_threshold: float = 0.01, mi_batch_size: int = 32) -> dict:
    """`fastvae.evaluation.evaluate` over the union of all ranks' shards; the same dict on every rank.

    Per-sentence metrics are reduced as sums over sentences (and tokens for ppl); MI (whole-set and per-batch,
    the latter over the split's own reference batches of `mi_batch_size`), AU and
    the linear probe are computed from the gathered posterior rows of the whole split, in its order (so both
    MI estimates are exactly the single-process values for the same `generator` seed).
    IW-NLL and the one-sample rec draw their noise per rank: the same estimator, other draws."""
    from .. import functional as F
    from ..evaluation import evaluate, linear_probe_accuracy, per_batch_mutual_information, posterior_stats
    from ..evaluation.metrics import check_mi_batch_size, perplexity

    if not ctx.enabled:
        return evaluate(model, dataset, batch_size=batch_size, iw_samples=iw_samples, metrics=metrics,
                        device=device, generator=generator, batch_mode=batch_mode, mi_batch_size=mi_batch_size)
    check_mi_batch_size(mi_batch_size)
    is_vae = hasattr(model, "encode")
    allowed = ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au", "probe_acc") if is_vae else ("nll", "ppl")
    wanted = list(allowed if metrics is None else metrics)
    unknown = sorted(set(wanted) - set(allowed))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(allowed)}")
    if iw_samples == 0 and "nll" in wanted:
        wanted.remove("nll")
    lengths = [len(sentence) for sentence in dataset.sentences]
    indices = bucket_shard_indices(lengths, batch_size, ctx)
    shard = subset_dataset(dataset, indices)
    # per-rank generators: independent draws, reproducible from the caller's seed
    seed = int(torch.randint(2 ** 62, (1,), generator=generator).item()) if generator is not None else 0
    local_gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 7919 * (ctx.rank + 1))

    local = [m for m in wanted if m in _SUMMED or m == "ppl"]
    if is_vae and "ppl" in local:  # ppl needs the summed nll (or, without IW samples, the elbo)
        local.append("nll" if iw_samples > 0 else "elbo")
    local = list(dict.fromkeys(local))
    sums = {key: 0.0 for key in _SUMMED}
    count = len(shard.sentences)
    if count > 0 and local:
        part = evaluate(model, shard, batch_size=batch_size, iw_samples=iw_samples, metrics=local, device=device,
                        generator=local_gen, batch_mode=batch_mode)
        for key in sums:
            if key in part:
                sums[key] = float(part[key]) * count
    sums["num_sentences"] = count
    sums["num_tokens"] = int(shard.num_tokens()) if count > 0 else 0
    total = allreduce_sums(sums, ctx)
    n, tokens = total["num_sentences"], total["num_tokens"]
    result = {"num_sentences": n, "num_tokens": tokens}
    for key in _SUMMED:
        if key in local or (key in ("rec", "kl") and "elbo" in local):
            result[key] = total[key] / max(n, 1)
    if "ppl" in wanted:
        if "nll" in local:
            result["ppl"] = perplexity(total["nll"], tokens)
        else:
            result["ppl"] = perplexity(total["elbo"], tokens)
            result["ppl_from"] = "elbo"

    whole_set = [m for m in ("mi", "mi_batch", "au", "probe_acc") if m in wanted]
    if is_vae and whole_set:
        if count > 0:
            mu, logvar = posterior_stats(model, shard, batch_size=batch_size, device=device)
        else:
            mu = logvar = torch.zeros((0, model.config.latent_dim), device=device)
        mu_all = gather_rows_in_order(mu.float(), indices, len(dataset.sentences), ctx)
        logvar_all = gather_rows_in_order(logvar.float(), indices, len(dataset.sentences), ctx)
        if "mi" in wanted:
            mi_gen = torch.Generator(device=mu_all.device).manual_seed(seed)
            result["mi"] = float(F.mutual_information(mu_all, logvar_all, generator=mi_gen))
        if "mi_batch" in wanted:
            mi_gen = torch.Generator(device=mu_all.device).manual_seed(seed + 1)
            result["mi_batch"] = float(per_batch_mutual_information(
                mu_all, logvar_all, lengths, mi_batch_size, generator=mi_gen))
        if "au" in wanted:
            au, var = F.active_units(mu_all, threshold=au_threshold)
            result["au"], result["au_var"] = int(au), [float(v) for v in var]
        labels = getattr(dataset, "labels", None)
        if "probe_acc" in wanted and labels is not None and n >= 10:
            result["probe_acc"] = float(linear_probe_accuracy(mu_all, labels.to(mu_all.device)))
    # identical dicts on every rank, whatever floating-point noise the local parts carry
    return broadcast_object(result, ctx)
