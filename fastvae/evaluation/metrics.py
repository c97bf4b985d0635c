"""The papers' evaluation metrics (recipes.md), batched, with one host sync at the end.

Every value is a per-sentence mean over the evaluated split:
  rec       -log p(x|z), one posterior sample, summed over the predicted tokens (words and </s>)
  kl        analytic KL(q(z|x) || N(0, I))
  elbo      rec + kl, i.e. the negative ELBO (a bound on nll, in nats, as the papers print it)
  nll       importance-weighted -log p(x) with K samples (default 500): batched across sentences and
            samples; the decoder chunks K so memory stays bounded
  ppl       exp(sum of per-sentence nll / number of predicted tokens): </s> counts, <s> does not
            (from nll when computed, else from elbo)
  mi        whole-set mutual information (aggregate posterior over the whole split, Li et al.)
  mi_batch  per-batch mutual information (He et al.): the aggregate posterior inside each batch of the split's
            reference partition into batches of `mi_batch_size` (default 32, the papers'; capped near
            log 32), whatever batch size the evaluation itself runs at
  au        active units: dimensions whose Var_x[mu(x)] (unbiased, over the split) >= 0.01
  probe_acc held-out accuracy of a linear probe on mu, when the split has labels
LSTM language models report nll (exact) and ppl.

`evaluate(..., distributed=ctx)` under torchrun: each rank evaluates its shard of the split (cut at the bucket
batches one process forms, `sharding.py`), the sums are all-reduced and the posterior rows gathered back into
the split's order, so the metric list, the ppl rule and the whole-set metrics above are the same code for one
process and for N ranks.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .. import functional as F
from ..data import make_batches
from ..data.batching import bucket_groups
from ..data.corpus import TextDataset
from ..host_memory import keep_freed_memory
from .sharding import bucket_shard_indices, subset_dataset

if TYPE_CHECKING:  # fastvae.training imports this package: the collectives are imported where they are used
    from ..training.distributed import DistContext

VAE_METRICS = ("rec", "kl", "elbo", "nll", "ppl", "mi", "mi_batch", "au", "probe_acc")
LM_METRICS = ("nll", "ppl")
WHOLE_SET_METRICS = ("mi", "mi_batch", "au", "probe_acc")  # need the posterior rows of the whole split


def perplexity(total_nats: float, num_tokens: int) -> float:
    """exp(nats per token); inf (not OverflowError) once that passes ~709 nats, as a diverged model's does."""
    if num_tokens <= 0:
        return math.nan
    per_token = total_nats / num_tokens
    if math.isnan(per_token):
        return math.nan
    try:
        return math.exp(per_token)
    except OverflowError:
        return math.inf

def _is_lm(model) -> bool:
    from ..models.protocol import is_vae_model

    return callable(getattr(model, "nll", None)) and not is_vae_model(model)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


class _EvalMode:
    """Puts the model in eval mode and no-grad, and restores its training flag afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def _batches(dataset: TextDataset, batch_size: int, batch_mode: str, model=None):
    _check_dataset(dataset, model)
    return make_batches(dataset, batch_size, mode=batch_mode, shuffle=False)


def _check_dataset(dataset: TextDataset, model=None) -> None:
    if not isinstance(dataset, TextDataset):
        raise TypeError(f"expected a fastvae.data.TextDataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no sentences to evaluate")
    vocab_size = getattr(model, "vocab_size", None)
    if vocab_size is not None:
        # Once per split, on the host tensors: a corpus encoded with another vocabulary fails here, not deep
        # inside an embedding lookup.
        largest = int(torch.cat(dataset.sentences).max()) if dataset.num_tokens() > len(dataset) else -1
        if largest >= vocab_size:
            raise ValueError(f"dataset {dataset.name!r} holds word id {largest}, but the model's vocabulary has "
                             f"{vocab_size} tokens: the corpus was encoded with a different vocabulary (load it "
                             "with the checkpoint's vocab)")


def _resolve_device(model, device) -> torch.device:
    """The model's device; `device`, when given, must be where the model's parameters are. On the CPU, freed
    memory stays in the process from here on (fastvae.host_memory: IW-NLL allocates the same chunks again and
    again)."""
    model_device = _model_device(model)
    if model_device.type == "cpu":
        keep_freed_memory()
    if device is None:
        return model_device
    device = torch.device(device)
    if device.type != model_device.type or (device.index is not None and model_device.index is not None
                                            and device.index != model_device.index):
        raise ValueError(f"evaluation device {device} differs from the model's device {model_device}; "
                         f"move the model first (model.to({str(device)!r}))")
    return model_device


def posterior_stats(model, dataset: TextDataset, *, batch_size: int = 128, device=None, batch_mode: str = "padded"):
    """(mu, logvar), each [N, nz], in dataset order."""
    device = _resolve_device(model, device)
    mu_all = logvar_all = None
    with _EvalMode(model):
        for batch in _batches(dataset, batch_size, batch_mode, model):
            batch = batch.to(device)
            mu, logvar = model.encode(batch.tokens, batch.lengths)
            if mu_all is None:
                mu_all = mu.new_empty(len(dataset), mu.shape[1])
                logvar_all = mu.new_empty(len(dataset), mu.shape[1])
            mu_all[batch.indices] = mu
            logvar_all[batch.indices] = logvar
    return mu_all, logvar_all


def _check_k(K) -> int:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"the number of importance samples must be a positive int, got {K!r}")
    return K


def iw_log_likelihood_batch(model, batch, K: int, generator=None, posterior=None) -> torch.Tensor:
    """log p(x) ~= logsumexp_k [log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)] - log K, for one batch: [B].

    `posterior`: the batch's (mu, logvar) when the caller already encoded it."""
    mu, logvar = posterior if posterior is not None else model.encode(batch.tokens, batch.lengths)
    z = F.reparameterize(mu, logvar, nsamples=K, generator=generator)
    if K == 1:
        z = z.unsqueeze(1)  # reparameterize returns [B, nz] for one sample; keep the samples axis
    log_px_z = -model.reconstruction(batch.tokens, batch.lengths, z)               # [B, K]
    log_w = log_px_z + F.standard_normal_log_prob(z) - F.gaussian_log_prob(z, mu, logvar)
    return torch.logsumexp(log_w, dim=1) - math.log(K)


def iw_nll(model, dataset: TextDataset, K: int = 500, *, batch_size: int = 32, device=None, generator=None,
           batch_mode: str = "bucket") -> torch.Tensor:
    """Per-sentence importance-weighted -log p(x), [N] in dataset order (K samples per sentence).

    Sentences are evaluated `batch_size` at a time with all K samples at once (the decoder shares the word
    projection across samples and chunks K to bound memory), never one sentence at a time."""
    K = _check_k(K)
    device = _resolve_device(model, device)
    out = torch.empty(len(dataset), dtype=torch.float64, device=device)
    with _EvalMode(model):
        for batch in _batches(dataset, batch_size, batch_mode, model):
            batch = batch.to(device)
            out[batch.indices] = -iw_log_likelihood_batch(model, batch, K, generator).double()
    return out


DEFAULT_MI_BATCH_SIZE = 32  # He et al.'s calc_mi runs over the validation batches of their batch size, 32


def check_mi_batch_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"mi_batch_size must be a positive int (the per-batch MI estimator's batch, 32 in the "
                         f"papers), got {value!r}")
    return value


def per_batch_mutual_information(mu: torch.Tensor, logvar: torch.Tensor, lengths,
                                 batch_size: int = DEFAULT_MI_BATCH_SIZE, *,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
    """He et al.'s per-batch MI (their `calc_mi`): the split's rows are cut into the reference batches
    (`bucket_groups`: equal lengths, at most `batch_size` rows), I_q(x; z) is estimated inside each batch
    with that batch as the aggregate posterior, and the batch values are averaged weighted by batch size.

    `mu`, `logvar`: [N, nz] in split order; `lengths`: the N sentence lengths. One z per row, drawn for the
    whole split at once (reproducible with `generator`). A 0-dim float64 tensor, at most about log(batch_size)."""
    check_mi_batch_size(batch_size)
    lengths = list(lengths)
    if mu.dim() != 2 or mu.shape[0] != len(lengths):
        raise ValueError(f"per_batch_mutual_information: mu must be [N, nz] with one row per length, got "
                         f"{tuple(mu.shape)} for {len(lengths)} lengths")
    if mu.shape[0] == 0:
        raise ValueError("per_batch_mutual_information: no rows")
    z = F.reparameterize(mu, logvar, generator=generator)
    total = torch.zeros((), dtype=torch.float64, device=mu.device)
    for group in bucket_groups(lengths, batch_size):
        rows = torch.as_tensor(group, dtype=torch.long, device=mu.device)
        total += F.mutual_information(mu[rows], logvar[rows], z[rows]).double() * len(group)
    return total / mu.shape[0]


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, *, train_fraction: float = 0.8,
                          steps: int = 200, seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised features.

    A fixed-seed split (train_fraction for fitting, the rest for the accuracy), full-batch L-BFGS with a
    small L2 penalty: how much of the label a linear read-out of the features carries."""
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"linear_probe_accuracy: features [N, d] and labels [N] expected, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"linear_probe_accuracy: train_fraction must be in (0, 1), got {train_fraction}")
    n = features.shape[0]
    n_train = int(round(n * train_fraction))
    if n_train < 2 or n - n_train < 1:
        raise ValueError(f"linear_probe_accuracy: {n} examples are too few for a held-out split")
    x = features.detach().double().cpu()
    y = labels.detach().long().cpu()
    num_classes = int(y.max()) + 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = perm[:n_train], perm[n_train:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ weight + bias, y[train]) + 1e-4 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x[test] @ weight + bias).argmax(1)
    return float((pred == y[test]).double().mean())


def evaluate(model, dataset: TextDataset, *, batch_size: int = 32, iw_samples: int = 500, metrics=None,
             device=None, generator: torch.Generator | None = None, batch_mode: str = "bucket",
             mi_batch_size: int = DEFAULT_MI_BATCH_SIZE, au_threshold: float = 0.01,
             distributed: DistContext | None = None) -> dict:
    """The metrics of the module docstring on one split. `metrics=None` computes all that apply;
    `iw_samples=0` skips the importance-weighted nll (ppl then comes from the ELBO). `batch_size` is how
    many sentences are evaluated at once; `mi_batch_size` is the per-batch MI estimator's own batch.

    `distributed`: the `fastvae.training.distributed.DistContext` of a torchrun job. When it is enabled, every
    rank must call this with the same arguments: each evaluates its shard, and all get the same dict, that of the
    whole split. Per-sentence means are reduced as sums; MI, per-batch MI, AU and the probe use the gathered
    posterior rows of the whole split, and both MI estimators draw their noise from generators seeded by one draw
    of `generator`, so they do not depend on the number of ranks (one process keeps drawing from `generator`
    itself, as it always has). IW-NLL and the one-sample rec draw their noise per rank: the same estimator,
    other draws."""
    lm = _is_lm(model)
    wanted = _requested_metrics(lm, dataset, metrics, iw_samples, mi_batch_size)
    device = _resolve_device(model, device)
    _check_dataset(dataset, model)  # on every rank, before any collective
    ctx = distributed if distributed is not None and distributed.enabled else None
    loop_generator, mi_generator, mi_batch_generator = _random_streams(generator, ctx, device)
    options = dict(lm=lm, wanted=wanted, iw_samples=iw_samples, device=device, generator=loop_generator)
    if ctx is None:
        batches = make_batches(dataset, batch_size, mode=batch_mode, shuffle=False)
        sums, posterior = _accumulate(model, batches, len(dataset), **options)
    else:
        sums, posterior = _accumulate_over_ranks(model, dataset, ctx, batch_size=batch_size, batch_mode=batch_mode,
                                                 **options)
    whole_set = {}
    if posterior is not None:  # before the sums are read, so the device is not waited for in between
        with torch.no_grad():
            whole_set = _whole_set_metrics(*posterior, dataset, wanted, mi_generator=mi_generator,
                                           mi_batch_generator=mi_batch_generator, mi_batch_size=mi_batch_size,
                                           au_threshold=au_threshold)
    n, num_tokens = len(dataset), dataset.num_tokens()
    result = {"num_sentences": n, "num_tokens": num_tokens}
    result.update(_per_sentence_metrics(sums, n, num_tokens, wanted, lm))
    result.update(whole_set)
    keep = wanted | {"num_sentences", "num_tokens", "ppl_from", "au_var"}
    keep |= {"rec", "kl"} if "elbo" in wanted else set()
    result = {k: v for k, v in result.items() if k in keep}
    if ctx is not None:
        from ..training.distributed import broadcast_object

        # identical dicts on every rank, whatever floating-point noise the local parts carry
        result = broadcast_object(result, ctx)
    return result


def _requested_metrics(lm: bool, dataset, metrics, iw_samples, mi_batch_size) -> set:
    """The metrics `evaluate` computes: the applicable ones, less nll without IW samples and AU on one sentence."""
    allowed = LM_METRICS if lm else VAE_METRICS
    wanted = set(allowed if metrics is None else metrics)
    unknown = wanted - set(allowed)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)} for a {'language model' if lm else 'VAE'}; "
                         f"choose from {', '.join(allowed)}")
    if isinstance(iw_samples, bool) or not isinstance(iw_samples, int) or iw_samples < 0:
        raise ValueError(f"iw_samples must be an int >= 0, got {iw_samples!r}")
    check_mi_batch_size(mi_batch_size)
    if iw_samples == 0:
        wanted.discard("nll")
    if not lm and isinstance(dataset, TextDataset) and len(dataset) == 1 and "au" in wanted:
        # AU needs the variance of mu across sentences: skipped for one sentence, unless asked for by name.
        if metrics is not None:
            raise ValueError(f"metric 'au' needs at least 2 sentences; dataset {dataset.name!r} has 1")
        wanted.discard("au")
    return wanted


def _random_streams(generator, ctx, device: torch.device) -> tuple:
    """The generators of (the batch loop, whole-set MI, per-batch MI).

    One process consumes the caller's generator in that order, as it always has. Ranks cannot share one stream:
    each rank's loop gets its own generator, and both MI estimators get generators seeded from one draw of the
    caller's, so they see the same noise whatever the number of ranks."""
    if ctx is None:
        return generator, generator, generator
    seed = 0 if generator is None else int(torch.randint(2 ** 62, (1,), generator=generator,
                                                         device=generator.device).item())
    loop = torch.Generator(device=device).manual_seed(seed + 7919 * (ctx.rank + 1))
    return (loop, torch.Generator(device=device).manual_seed(seed),
            torch.Generator(device=device).manual_seed(seed + 1))


def _accumulate(model, batches, num_rows: int, *, lm: bool, wanted: set, iw_samples: int, device: torch.device,
                generator) -> tuple:
    """One pass over `batches`: ({name: summed float64 0-d tensor}, (mu, logvar) [num_rows, nz] or None).

    The sums are rec, kl and IW-NLL over sentences (nll alone for a language model) and stay on the device (no
    host sync); the posterior rows, placed at the batches' dataset indices, are kept only when a whole-set
    metric is wanted, and are None when there are no batches."""
    with _EvalMode(model):
        if lm:
            nll = torch.zeros((), dtype=torch.float64, device=device)
            for batch in batches:
                batch = batch.to(device)
                nll += model.nll(batch.tokens, batch.lengths).double().sum()
            return {"nll": nll}, None
        keep_posterior = bool(wanted & set(WHOLE_SET_METRICS))
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # rec, kl, iw-nll
        mu_all = logvar_all = None
        for batch in batches:
            batch = batch.to(device)
            mu, logvar = model.encode(batch.tokens, batch.lengths)
            z = F.reparameterize(mu, logvar, generator=generator)
            sums[0] += model.reconstruction(batch.tokens, batch.lengths, z).double().sum()
            sums[1] += F.kl_per_dim(mu, logvar).double().sum()
            if "nll" in wanted:
                sums[2] -= iw_log_likelihood_batch(model, batch, iw_samples, generator, (mu, logvar)).double().sum()
            if keep_posterior:
                if mu_all is None:
                    mu_all = mu.new_empty(num_rows, mu.shape[1])
                    logvar_all = mu.new_empty(num_rows, mu.shape[1])
                mu_all[batch.indices] = mu
                logvar_all[batch.indices] = logvar
    posterior = (mu_all, logvar_all) if keep_posterior and mu_all is not None else None
    return {"rec": sums[0], "kl": sums[1], "nll": sums[2]}, posterior


def _accumulate_over_ranks(model, dataset: TextDataset, ctx: DistContext, *, batch_size: int, batch_mode: str,
                           lm: bool, wanted: set, iw_samples: int, device: torch.device, generator) -> tuple:
    """`_accumulate` over this rank's shard, then combined: ({name: float sum over the split}, the posterior
    rows of every rank in the split's order, or None), the same on every rank."""
    from ..training.distributed import allreduce_sums, gather_rows_in_order

    indices = bucket_shard_indices([len(s) for s in dataset.sentences], batch_size, ctx)
    shard = subset_dataset(dataset, indices)
    # a shard is empty when the split has fewer bucket batches than there are ranks: it still joins every collective
    batches = make_batches(shard, batch_size, mode=batch_mode, shuffle=False) if len(shard) else []
    sums, posterior = _accumulate(model, batches, len(shard), lm=lm, wanted=wanted, iw_samples=iw_samples,
                                  device=device, generator=generator)
    sums = allreduce_sums(_host_floats(sums), ctx)
    if lm or not wanted & set(WHOLE_SET_METRICS):
        return sums, None
    if posterior is None:
        empty = torch.zeros((0, model.latent_dim), device=device)
        posterior = (empty, empty)
    # float32 on every rank: an empty shard has no model output whose dtype it could copy
    return sums, tuple(gather_rows_in_order(rows.float(), indices, len(dataset), ctx) for rows in posterior)


def _host_floats(sums: dict) -> dict:
    """The sums as Python floats, with one host sync."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in sums.values()]).tolist()
    return dict(zip(sums, values))


def _per_sentence_metrics(sums: dict, n: int, num_tokens: int, wanted: set, lm: bool) -> dict:
    """Means over the split's sentences of the summed quantities, and ppl: from the IW-NLL when it was computed,
    else from the ELBO (marked by `ppl_from`)."""
    sums = _host_floats(sums)
    if lm:
        return {"nll": sums["nll"] / n, "ppl": perplexity(sums["nll"], num_tokens)}
    rec, kl = sums["rec"], sums["kl"]
    out = {"rec": rec / n, "kl": kl / n, "elbo": (rec + kl) / n}
    if "nll" in wanted:
        out["nll"] = sums["nll"] / n
        out["ppl"] = perplexity(sums["nll"], num_tokens)
    else:
        out["ppl"] = perplexity(rec + kl, num_tokens)
        out["ppl_from"] = "elbo"
    return out


def _whole_set_metrics(mu: torch.Tensor, logvar: torch.Tensor, dataset: TextDataset, wanted: set, *,
                       mi_generator, mi_batch_generator, mi_batch_size: int, au_threshold: float) -> dict:
    """MI, per-batch MI, AU and the linear probe from the posterior rows of the whole split, in its order."""
    mi = mi_batch = None
    if "mi" in wanted:
        mi = F.mutual_information(mu, logvar, generator=mi_generator)
    if "mi_batch" in wanted:
        mi_batch = per_batch_mutual_information(mu, logvar, [len(s) for s in dataset.sentences], mi_batch_size,
                                                generator=mi_batch_generator)
    out = {}
    if mi_batch is not None:
        out["mi_batch"] = float(mi_batch)
    if mi is not None:
        out["mi"] = float(mi)
    if "au" in wanted:
        count, var = F.active_units(mu, threshold=au_threshold)
        out["au"] = int(count)
        out["au_var"] = [float(v) for v in var]
    if "probe_acc" in wanted and dataset.labels is not None and len(dataset) >= 10:
        out["probe_acc"] = linear_probe_accuracy(mu, dataset.labels)
    return out
