"""Fused Triton kernels, installed as `fastvae.kernels` (the folder is `kernels/` in the repository).

One op per module: Triton forward/backward kernels, host launchers, an autograd.Function,
and the plain-torch reference beside them. This package imports nothing on purpose:
`@triton.jit` reads TRITON_INTERPRET when a kernel module is first imported, and
`fastvae.backend` decides whether the interpreter is needed before that happens.
"""
