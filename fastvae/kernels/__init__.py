"""Fused Triton kernels (`fastvae.kernels`).

One op per module: Triton forward/backward kernels, host launchers, the custom ops that wrap them
(`torch.ops.fastvae.<op>_triton`, with fakes and autograd, so torch.compile keeps them), and the
plain-torch reference beside them. `dtypes.py` and `free_bits.py` hold what the references and the
kernels share and import no Triton. This package imports nothing on purpose: `@triton.jit` reads
TRITON_INTERPRET when a kernel module is first imported, and `fastvae.backend` (the only importer of
the kernel modules) decides whether the interpreter is needed before that happens.
"""
