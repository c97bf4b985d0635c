"""Checks of a CUDA build of fastvae._C, run inside the environment it was installed into (no GPU needed):
it imports without a driver, reports itself as a CUDA build, and every op that csrc/ops.cpp defines has a
CUDA kernel in the dispatcher (asked of the dispatcher itself, not read from the sources). Also no fastvae
symbol is left unresolved in the shared library. Exit status 1 with the reasons when any check fails."""
import json
import subprocess
import sys


def main() -> int:
    import torch

    import fastvae
    import fastvae._C
    from fastvae import _build_info

    failures = []
    info = _build_info.BUILD_INFO
    print(f"fastvae {fastvae.__version__} from {fastvae.__file__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); built for {info.get('cuda_arch_list')} "
          f"with the toolkit {info.get('cuda_home')}")
    if torch.version.cuda is None:
        failures.append(f"torch {torch.__version__} is not a CUDA build")
    if not info.get("with_cuda"):
        failures.append("fastvae._build_info says with_cuda=False")

    # `python -m fastvae.info` as a user runs it, once: the JSON is checked and printed as the user sees it.
    from fastvae import info as fastvae_info
    proc = subprocess.run([sys.executable, "-m", "fastvae.info", "--json"], capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        report = None
    devices = report["compiled_core"]["devices"] if report else []
    if report:
        print(fastvae_info.format_report(report))
    if "CUDA" not in devices:
        failures.append(f"python -m fastvae.info does not report the CUDA build (devices {devices}, exit "
                        f"{proc.returncode}): {proc.stderr.strip()[-500:]}")

    ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastvae::"))
    defined = [name for name in ops if "csrc/ops.cpp" in torch._C._dispatch_dump(name).split("debug:", 1)[-1]
               .splitlines()[0]]
    if not defined:
        failures.append("no fastvae op is registered from csrc/ops.cpp")
    for name in defined:
        cpu = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
        print(f"  {name:42s} CPU {'yes' if cpu else 'NO'}   CUDA {'yes' if cuda else 'NO'}")
        if not (cpu and cuda):
            failures.append(f"{name} lacks a {'CPU' if not cpu else 'CUDA'} kernel")

    library = fastvae._C.__file__
    undefined = subprocess.run(["nm", "-D", "--undefined-only", "-C", library], capture_output=True, text=True)
    if undefined.returncode == 0:
        missing = [line.strip() for line in undefined.stdout.splitlines() if "fastvae::" in line]
        if missing:
            failures.append("unresolved fastvae symbols in " + library + ": " + "; ".join(missing[:10]))
    else:
        print(f"  (nm unavailable: {undefined.stderr.strip()[:200]}; unresolved-symbol check skipped)")

    if failures:
        print("CUDA build check FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"CUDA build check passed: {len(defined)} ops, each with a CPU and a CUDA kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
