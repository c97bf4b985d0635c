"""The latent-variable terms of a Gaussian text VAE as functions: the drop-in loss API.

Every function takes the posterior parameters `mu`, `logvar` of shape [B, D] (any floating
dtype; float16/bfloat16 compute in float32), validates them, and runs on the backend that
`fastvae.backend` selects per call: Triton kernels (`fastvae.kernels`, custom ops that
`torch.compile` keeps in its graphs) for CUDA tensors, the plain-torch reference otherwise.
Semantics are those of the published recipes (Li et al.'s
free bits, He et al.'s and Li et al.'s MI estimators), written out in each docstring.

Dtypes: elementwise results (z, kl_per_dim) keep the input dtype; reductions (losses, log
densities, MI) are returned in the compute dtype (float32, or float64 for float64 inputs), so a
float16 batch with a large KL does not overflow. NaN in the inputs propagates to the outputs
(never a silent 0); inputs are not scanned for NaN (that would synchronise with the GPU).
Random noise is drawn with torch.randn (optionally from `generator`) in the compute dtype and
handed to whichever backend runs, so results are reproducible and identical in the noise
across backends.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import backend
from .kernels.dtypes import compute_dtype
from .kernels.free_bits import FREE_BITS_MODES

OP_REPARAMETERIZE = backend.register_op("reparameterize", triton=True, kernels="reparameterize")
OP_KL_PER_DIM = backend.register_op("kl_per_dim", kernels="kl_free_bits")
OP_FREE_BITS_KL = backend.register_op("free_bits_kl", triton=True, kernels="kl_free_bits")
OP_SAMPLE_AND_KL = backend.register_op("sample_and_kl", triton=True, kernels="sample_and_kl")
OP_GAUSSIAN_LOG_PROB = backend.register_op("gaussian_log_prob", triton=True, kernels="gaussian_log_prob")
OP_MUTUAL_INFORMATION = backend.register_op("mutual_information", triton=True, kernels="mutual_information",
                                            triton_backward=False)
OP_ACTIVE_UNITS = backend.register_op("active_units")

__all__ = ["reparameterize", "kl_per_dim", "free_bits_kl", "sample_and_kl", "gaussian_log_prob",
           "standard_normal_log_prob", "mutual_information", "active_units", "FREE_BITS_MODES"]


# ---------------------------------------------------------------- validation
def _check_tensor(name: str, fn: str, x, ranks=(2,)) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{fn}: {name} must have a floating dtype (float16, bfloat16, float32, float64), "
                        f"got {x.dtype}")
    if x.dim() not in ranks:
        shapes = " or ".join({2: "[batch, latent_dim]", 3: "[batch, samples, latent_dim]"}[r] for r in ranks)
        raise ValueError(f"{fn}: {name} must have shape {shapes}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{fn}: {name} is empty (shape {tuple(x.shape)}); need at least one row and one dimension")


def _check_posterior(fn: str, mu, logvar) -> None:
    _check_tensor("mu", fn, mu)
    _check_tensor("logvar", fn, logvar)
    if mu.shape != logvar.shape:
        raise ValueError(f"{fn}: mu and logvar must have the same shape [batch, latent_dim], got "
                         f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
    if mu.dtype != logvar.dtype:
        raise TypeError(f"{fn}: mu and logvar must have the same dtype, got {mu.dtype} and {logvar.dtype}")
    if mu.device != logvar.device:
        raise ValueError(f"{fn}: mu and logvar must be on the same device, got {mu.device} and {logvar.device}")


def _check_nsamples(fn: str, nsamples) -> int:
    if isinstance(nsamples, bool) or not isinstance(nsamples, numbers.Integral) or nsamples < 1:
        raise ValueError(f"{fn}: nsamples must be a positive int, got {nsamples!r}")
    return int(nsamples)


def _check_free_bits(fn: str, target, mode) -> float:
    if mode not in FREE_BITS_MODES:
        raise ValueError(f"{fn}: unknown free-bits mode {mode!r}; expected one of {', '.join(FREE_BITS_MODES)}")
    if isinstance(target, torch.Tensor):
        if target.numel() != 1:
            raise ValueError(f"{fn}: target must be a number (nats per sentence), got a tensor of shape "
                             f"{tuple(target.shape)}")
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, numbers.Real):
        raise TypeError(f"{fn}: target must be a number (nats per sentence), got {type(target).__name__}")
    target = float(target)
    if not math.isfinite(target) or target < 0:
        raise ValueError(f"{fn}: target must be a finite number >= 0 (nats per sentence), got {target}")
    if mode == "none" and target != 0:
        raise ValueError(f"{fn}: target={target:g} with mode='none' would be ignored; give a free-bits mode "
                         f"('batch' or 'dim') to use it, or leave the target at 0")
    return target


def _draw_noise(fn: str, mu, nsamples: int, generator) -> torch.Tensor:
    batch, dims = mu.shape
    dtype = compute_dtype(mu.dtype)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != mu.device.type:
            raise ValueError(f"{fn}: generator is on {generator.device} but mu is on {mu.device}; "
                             f"create it with torch.Generator(device={str(mu.device)!r})")
    return torch.randn((batch, nsamples, dims), generator=generator, dtype=dtype, device=mu.device)


def _shape_samples(z: torch.Tensor, nsamples: int) -> torch.Tensor:
    return z.squeeze(1) if nsamples == 1 else z


# ---------------------------------------------------------------- public API
def reparameterize(mu, logvar, nsamples: int = 1, generator=None):
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): [B, D] for nsamples=1, else [B, K, D].

    Differentiable in mu and logvar (dmu = sum_k dz_k, dlogvar = 0.5 std sum_k dz_k eps_k).
    `generator` (a torch.Generator on mu's device) makes the draw reproducible."""
    fn = "reparameterize"
    _check_posterior(fn, mu, logvar)
    nsamples = _check_nsamples(fn, nsamples)
    eps = _draw_noise(fn, mu, nsamples, generator)
    z = backend.implementation(OP_REPARAMETERIZE, mu.device)(mu, logvar, eps)
    return _shape_samples(z, nsamples)


def kl_per_dim(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)) per example and dimension: [B, D], in the input dtype.

    KL_ij = 0.5 * (mu_ij^2 + exp(logvar_ij) - logvar_ij - 1); differentiable (elementwise torch)."""
    _check_posterior("kl_per_dim", mu, logvar)
    # torch on every device: elementwise, no kernel of its own
    return backend.implementation(OP_KL_PER_DIM, mu.device)(mu, logvar).to(mu.dtype)


def _free_bits_doc(fn):
    fn.__doc__ = fn.__doc__.replace("{MODES}", """
    Free-bits modes (lam = `target`, nats per sentence; D = latent_dim; KL_ij as in kl_per_dim;
    masks are constants for the gradient; "[a > b]" is evaluated as "not a <= b", so NaN
    propagates):
      "none"     value mean_i sum_j KL_ij                              gradient: of the value
      "sentence" (fb=1) value mean_i [KL_i > lam] KL_i, KL_i = sum_j KL_ij   gradient: [KL_i > lam] dKL_i
      "dim"      (fb=2, Li et al.) value mean_i sum_j [KL_ij > lam/D] KL_ij;
                 gradient: [KL_ij > lam/D] dKL_ij = that of mean_i sum_j max(lam/D, KL_ij)
                 (the gradient of the max form; the value is the masked sum, not the max)
      "batch"    (fb=3) value [mean_i KL_i > lam] mean_i KL_i          gradient: of the value
      "kingma"   (Kingma et al. 2016) value sum_j max(lam/D, mean_i KL_ij);
                 gradient: [mean_i KL_ij > lam/D] d mean_i KL_ij
    The KL to log is always the unmasked one.""")
    return fn


@_free_bits_doc
def free_bits_kl(mu, logvar, target: float = 0.0, mode: str = "none"):
    """The KL term of the loss with free bits: a scalar (batch mean; compute dtype).
    {MODES}"""
    fn = "free_bits_kl"
    _check_posterior(fn, mu, logvar)
    target = _check_free_bits(fn, target, mode)
    return backend.implementation(OP_FREE_BITS_KL, mu.device)(mu, logvar, target, mode)[0]


@_free_bits_doc
def sample_and_kl(mu, logvar, nsamples: int = 1, target: float = 0.0, mode: str = "none", generator=None,
                  eps=None):
    """One fused pass for a training step: (z, kl_loss, kl_per_dim_mean).

    z: reparameterised samples, [B, D] (nsamples=1) or [B, K, D], input dtype, differentiable;
    kl_loss: free_bits_kl(mu, logvar, target, mode) (scalar, compute dtype, differentiable);
    kl_per_dim_mean: the unmasked KL per dimension averaged over the batch, [D], detached (for
    logging; its sum is the per-sentence KL). On the Triton backend the forward is one kernel
    (one read of mu/logvar, one write of z) and the backward is one kernel.
    `eps`: the standard-normal noise [B, nsamples, D] to use instead of drawing it (for example
    each data-parallel rank's rows of one draw for the global batch); `generator` is then unused.
    {MODES}"""
    fn = "sample_and_kl"
    _check_posterior(fn, mu, logvar)
    nsamples = _check_nsamples(fn, nsamples)
    target = _check_free_bits(fn, target, mode)
    if eps is None:
        eps = _draw_noise(fn, mu, nsamples, generator)
    else:
        _check_tensor("eps", fn, eps, ranks=(3,))
        if tuple(eps.shape) != (mu.shape[0], nsamples, mu.shape[1]):
            raise ValueError(f"{fn}: eps must have shape [B, nsamples, D] = {[mu.shape[0], nsamples, mu.shape[1]]}, "
                             f"got {list(eps.shape)}")
        if eps.device != mu.device:
            raise ValueError(f"{fn}: eps and mu must be on the same device, got {eps.device} and {mu.device}")
        eps = eps.to(compute_dtype(mu.dtype)).contiguous()
    z, loss, kl_mean = backend.implementation(OP_SAMPLE_AND_KL, mu.device)(mu, logvar, eps, target, mode)
    return _shape_samples(z, nsamples), loss, kl_mean


def _check_samples(fn: str, z, mu=None, logvar=None):
    _check_tensor("z", fn, z, ranks=(2, 3))
    if mu is not None:
        _check_posterior(fn, mu, logvar)
        if z.shape[0] != mu.shape[0] or z.shape[-1] != mu.shape[-1]:
            raise ValueError(f"{fn}: z must be [B, D] or [B, K, D] with B, D of mu {tuple(mu.shape)}, "
                             f"got z of shape {tuple(z.shape)}")
        if z.device != mu.device:
            raise ValueError(f"{fn}: z and mu must be on the same device, got {z.device} and {mu.device}")


def _log_prob(op, z, mu, logvar):
    squeeze = z.dim() == 2
    z3 = z.unsqueeze(1) if squeeze else z
    out = backend.implementation(op, z.device)(z3, mu, logvar)
    return out.squeeze(1) if squeeze else out


def gaussian_log_prob(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))) summed over D: z [B, D] -> [B], z [B, K, D] -> [B, K].

    Compute dtype; differentiable in z, mu and logvar. Direct (z - mu)^2 / var form (no
    cancellation for z close to mu with a tiny variance)."""
    fn = "gaussian_log_prob"
    _check_samples(fn, z, mu, logvar)
    return _log_prob(OP_GAUSSIAN_LOG_PROB, z, mu, logvar)


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over D: z [B, D] -> [B], z [B, K, D] -> [B, K] (compute dtype)."""
    _check_samples("standard_normal_log_prob", z)
    return _log_prob(OP_GAUSSIAN_LOG_PROB, z, None, None)


def mutual_information(mu, logvar, z=None, *, batch_size=None, generator=None):
    """Mutual information I_q(x; z) (nats, scalar tensor in the compute dtype), one z per row.

    I = E_x[-H(q(z|x))] - E_x E_{z~q(z|x)}[log q(z)], with log q(z_i) = logsumexp over the
    aggregate of log N(z_i; mu_n, var_n) minus log(aggregate size). `batch_size=None`: the
    whole-set estimator (aggregate = all N rows, Li et al.; capped near log N). `batch_size=S`:
    the per-batch estimator of He et al. (aggregate = the consecutive chunk of S rows holding i;
    chunk values averaged weighted by chunk size; capped near log S). The two are not
    comparable: always report which one. `z` [N, D] gives the samples; when None, one is drawn
    per row (reproducibly with `generator`). Memory is O(N * D) on every backend (the N x N
    pairs are streamed in tiles with an online logsumexp). The Triton kernel is forward-only:
    when a gradient is required (grad mode on and an input requires grad), the streamed torch
    reference runs instead and carries the gradient. The estimate can be slightly negative."""
    fn = "mutual_information"
    _check_posterior(fn, mu, logvar)
    if batch_size is None:
        segment = mu.shape[0]
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"{fn}: batch_size must be None (whole set) or a positive int, got {batch_size!r}")
        segment = min(int(batch_size), mu.shape[0])
    if z is None:
        z = reparameterize(mu, logvar, generator=generator)
    else:
        _check_tensor("z", fn, z)
        if z.shape != mu.shape:
            raise ValueError(f"{fn}: z must have the shape of mu {tuple(mu.shape)} (one sample per row), "
                             f"got {tuple(z.shape)}")
        if z.device != mu.device:
            raise ValueError(f"{fn}: z and mu must be on the same device, got {z.device} and {mu.device}")
    needs_grad = torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad or z.requires_grad)
    return backend.implementation(OP_MUTUAL_INFORMATION, mu.device, needs_grad=needs_grad)(z, mu, logvar, segment)


def active_units(mu, threshold: float = 0.01):
    """Active units: (count, per-dimension variance [D]) of mu over N rows.

    Var_j = sum_n (mu_nj - mean_j)^2 / (N - 1) (unbiased, as in recipes.md); a dimension is
    active when Var_j >= threshold. Needs N >= 2. The variance is computed in the compute
    dtype (float32/float64) and returned detached; count is a Python int."""
    fn = "active_units"
    _check_tensor("mu", fn, mu)
    if mu.shape[0] < 2:
        raise ValueError(f"{fn}: the unbiased variance needs at least 2 rows of mu, got {mu.shape[0]}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold >= 0:
        raise ValueError(f"{fn}: threshold must be a number >= 0, got {threshold!r}")
    # torch on every device (one reduction)
    mu_c = mu.detach().to(compute_dtype(mu.dtype))
    var = mu_c.var(dim=0, unbiased=True)
    return int((var >= threshold).sum().item()), var
