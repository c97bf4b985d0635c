"""Every latent Triton kernel, in every constexpr variant fastvae launches, compiles ahead of time
to a CUDA cubin for each GPU architecture users have (sm_80 A100, sm_89 L4/RTX 40, sm_90 H100, sm_100
B200): the compiler's checks (types, constexpr
branches, layouts) that the interpreter never runs, with no GPU needed.

The suite's conftest turns the interpreter on, so the compilation runs in a child process
without TRITON_INTERPRET. Skips when this Triton has no CUDA backend.
"""
import os
import subprocess
import sys

import pytest

PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64"}


def variants():
    """(kernel module, kernel name, signature, constexprs) for each launched configuration."""
    import triton.language as tl

    acc = {"fp32": tl.float32, "fp64": tl.float64}
    out = []
    for dtype, acc_name in (("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp32"), ("fp64", "fp64")):
        p, a = PTR[dtype], PTR[acc_name]
        strides = {name: "i32" for name in ("stride_mb", "stride_md", "stride_lb", "stride_ld")}
        modes = range(5) if dtype == "fp32" else (2,)
        for mode in modes:
            common = {"MODE": mode, "BLOCK_B": 64, "BLOCK_D": 32, "ACC_DTYPE": acc[acc_name]}
            out.append(("kl_free_bits", "_kl_free_bits_fwd_kernel", dict(
                mu_ptr=p, logvar_ptr=p, row_kl_ptr=a, row_loss_ptr=a, col_part_ptr=a, thresholds_ptr=a,
                B="i32", D="i32", **strides), common))
            out.append(("kl_free_bits", "_kl_free_bits_bwd_kernel", dict(
                mu_ptr=p, logvar_ptr=p, grad_ptr=a, row_kl_ptr=a, col_mean_ptr=a, batch_mean_ptr=a, dmu_ptr=p,
                dlogvar_ptr=p, thresholds_ptr=a, B="i32", D="i32", **strides), common))
            out.append(("sample_and_kl", "_sample_and_kl_fwd_kernel", dict(
                mu_ptr=p, logvar_ptr=p, eps_ptr=a, z_ptr=p, row_kl_ptr=a, row_loss_ptr=a, col_part_ptr=a,
                thresholds_ptr=a, B="i32", K="i32", D="i32", **strides), common))
            for has_dz in (True, False):
                out.append(("sample_and_kl", "_sample_and_kl_bwd_kernel", dict(
                    dz_ptr=p, eps_ptr=a, mu_ptr=p, logvar_ptr=p, grad_ptr=a, row_kl_ptr=a, col_mean_ptr=a,
                    batch_mean_ptr=a, dmu_ptr=p, dlogvar_ptr=p, thresholds_ptr=a, B="i32", K="i32", D="i32",
                    **strides), dict(common, HAS_DZ=has_dz)))
        out.append(("reparameterize", "_reparameterize_fwd_kernel", dict(
            mu_ptr=p, logvar_ptr=p, eps_ptr=a, z_ptr=p, B="i32", K="i32", D="i32", **strides),
            {"BLOCK_R": 64, "BLOCK_D": 32}))
        out.append(("reparameterize", "_reparameterize_bwd_kernel", dict(
            dz_ptr=p, eps_ptr=a, logvar_ptr=p, dmu_ptr=p, dlogvar_ptr=p, B="i32", K="i32", D="i32",
            stride_lb="i32", stride_ld="i32"), {"BLOCK_B": 32, "BLOCK_D": 32, "ACC_DTYPE": acc[acc_name]}))
        zs = {name: "i32" for name in ("stride_zb", "stride_zk", "stride_zd", "stride_mb", "stride_md", "stride_lb",
                                       "stride_ld")}
        for has_params in (True, False):
            out.append(("gaussian_log_prob", "_gaussian_log_prob_fwd_kernel", dict(
                z_ptr=p, mu_ptr=p, logvar_ptr=p, out_ptr=a, norm_ptr=a, B="i32", K="i32", D="i32", **zs),
                {"HAS_PARAMS": has_params, "BLOCK_R": 128, "BLOCK_D": 32, "ACC_DTYPE": acc[acc_name]}))
            out.append(("gaussian_log_prob", "_gaussian_log_prob_bwd_kernel", dict(
                grad_ptr=a, z_ptr=p, mu_ptr=p, logvar_ptr=p, dz_ptr=p, dmu_ptr=p, dlogvar_ptr=p, B="i32", K="i32",
                D="i32", **zs), {"HAS_PARAMS": has_params, "BLOCK_B": 64, "BLOCK_D": 32, "ACC_DTYPE": acc[acc_name]}))
        if dtype in ("fp32", "fp64"):
            for block in (32, 64):
                out.append(("mutual_information", "_mutual_information_fwd_kernel", dict(
                    z_t_ptr=a, mu_t_ptr=a, inv_var_t_ptr=a, const_ptr=a, lse_ptr=a, N="i32", D="i32",
                    SEGMENT="i32"), {"BLOCK_M": block, "BLOCK_N": block, "ACC_DTYPE": acc[acc_name]}))
    return out


ARCHS = (80, 89, 90, 100)


def compile_all(archs=ARCHS) -> int:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    count = 0
    for arch in archs:
        for module, name, signature, constexprs in variants():
            kernel = getattr(importlib.import_module(f"fastvae.kernels.{module}"), name)
            signature = dict(signature, **{key: "constexpr" for key in constexprs})
            try:
                triton.compile(ASTSource(kernel, signature, constexprs=constexprs),
                               target=GPUTarget("cuda", arch, 32))
            except Exception as exc:
                raise RuntimeError(f"{module}.{name} {constexprs} {signature} for sm_{arch}: {exc}") from exc
            count += 1
    return count


def _cuda_backend_available() -> bool:
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _cuda_backend_available(), reason="this Triton has no CUDA backend")
def test_every_kernel_compiles_for_every_gpu_architecture():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "compiled" in proc.stdout


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: this compiles real GPU kernels")
    print(f"compiled {compile_all()} kernel variants for sm_" + ", sm_".join(map(str, ARCHS)))
