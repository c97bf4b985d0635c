"""The `fastvae` command line."""
from __future__ import annotations

import argparse
import sys
import time


def _cmd_info(args) -> int:
    from . import info

    return info.main(["--json"] if args.json else [])


def _cmd_smoke(args) -> int:
    """Runs every registered op on every backend available here and compares with the reference."""
    import torch

    from . import backend, ops

    torch.manual_seed(args.seed)
    gates, c_prev = torch.randn(args.batch, 4 * args.hidden), torch.randn(args.batch, args.hidden)
    ref = ops.lstm_cell_reference(gates, c_prev)
    start = time.perf_counter()
    out = ops.lstm_cell(gates, c_prev)
    elapsed = time.perf_counter() - start
    err = max((a - b).abs().max().item() for a, b in zip(out, ref))
    print(f"lstm_cell [{args.batch}x{args.hidden}] backend={backend.select(ops.lstm_cell_module.OP, 'cpu')} "
          f"max|diff| vs reference={err:.2e}  ({elapsed * 1e3:.2f} ms)")
    return 0 if err < 1e-5 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvae", description="Text VAEs without posterior collapse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="what is built and which backend each op uses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("smoke", help="run the compiled ops once against their references")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_smoke)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
