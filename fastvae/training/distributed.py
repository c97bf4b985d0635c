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
- Evaluation (`fastvae.evaluation.evaluate(..., distributed=ctx)`; `distributed_evaluate` is its
  old name): the split is cut into contiguous, length-sorted shards at the reference's bucket-batch
  boundaries (`fastvae.evaluation.sharding`), so each evaluation batch is the one a single process
  would form; the sums (rec, kl, IW-NLL) are all-reduced with `allreduce_sums`, and the posterior
  rows (mu, logvar) of all ranks are gathered back into the split's order (`gather_rows_in_order`):
  whole-set MI, per-batch MI, AU and the linear probe use the global aggregate posterior.
- Only rank 0 writes (checkpoints, metrics.jsonl, plots, progress, prints): `ctx.is_main`.
NCCL on CUDA devices (rank r uses cuda:LOCAL_RANK), gloo on CPUs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist

from ..evaluation import evaluate
from ..evaluation.sharding import bucket_shard_indices, subset_dataset  # noqa: F401 - importable from here as before

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
def distributed_evaluate(model, dataset, ctx: DistContext, **options) -> dict:
    """`fastvae.evaluation.evaluate(model, dataset, distributed=ctx, **options)`, the rank-aware evaluator,
    under its earlier name: each rank evaluates its shard and all get the whole split's metrics."""
    return evaluate(model, dataset, distributed=ctx, **options)
