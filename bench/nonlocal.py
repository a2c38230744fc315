"""Non-local block vs the plain einsum reference (tests/test_nonlocal.py) as N = T*H*W grows.

    python -m bench.nonlocal                        # 3D maps, embedded_gaussian, CPU (or --device cuda)
    python -m bench.nonlocal --mode concatenation --sizes 8 12 16 20

Each (implementation, N) runs in a fresh process so that peak memory is its own: the peak resident set
growth on CPU (``ru_maxrss``), ``max_memory_allocated`` on CUDA. Forward pass without gradients; time is
the median of ``--repeat`` runs after one warm-up. The last rows give the growth exponent k of a
least-squares fit time ~ N^k and memory ~ N^k (the reference holds the N x M matrix: k ~ 2 for both).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.nonlocal_block import NonLocalBlock

ROOT = Path(__file__).resolve().parent.parent  # each child runs as `python -m bench.nonlocal` from here


def conv1x1(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = conv.weight.flatten(1)  # (O, C)
    return torch.einsum("oc,bc...->bo...", w, x) + conv.bias.view(1, -1, *([1] * (x.ndim - 2)))


def reference(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's formula written out with the full N x M affinity matrix (eval-mode BatchNorm)."""
    dim = x.ndim - 2

    def sub(t):
        if not isinstance(block.sub, torch.nn.Identity):
            return F.max_pool2d(t, 2, ceil_mode=True) if dim == 2 else F.max_pool3d(t, (1, 2, 2), ceil_mode=True)
        return t

    g = sub(conv1x1(block.g, x)).flatten(2)  # (B, C', M)
    if block.mode == "gaussian":
        q, k = x.flatten(2), sub(x).flatten(2)
    else:
        q, k = (
            conv1x1(block.theta, x).flatten(2),
            sub(conv1x1(block.phi, x)).flatten(2),
        )  # (B, Ck, N), (B, Ck, M)
    m = k.shape[-1]
    if block.mode in ("embedded_gaussian", "gaussian"):
        logits = torch.einsum("bcn,bcm->bnm", q, k)
        if block.scale:
            logits = logits / math.sqrt(q.shape[1])
        f = torch.exp(logits - logits.amax(-1, keepdim=True))
        f = f / f.sum(-1, keepdim=True)
    elif block.mode == "dot_product":
        f = torch.einsum("bcn,bcm->bnm", q, k) / m
    else:
        a = torch.einsum("c,bcn->bn", block.w_theta, q)
        b = torch.einsum("c,bcm->bm", block.w_phi, k)
        f = torch.relu(a[:, :, None] + b[:, None, :]) / m
    y = torch.einsum("bnm,bcm->bcn", f, g).reshape(x.shape[0], -1, *x.shape[2:])
    wy = conv1x1(block.out, y)
    bn = block.bn
    shape = (1, -1, *([1] * dim))
    z = (wy - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return x + z * bn.weight.view(shape) + bn.bias.view(shape)


def measure(impl: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    """One (implementation, size) measurement in this process: milliseconds and peak MiB."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    block = NonLocalBlock(in_channels=args.channels, dim=3, mode=args.mode, subsample=args.subsample).to(device).eval()
    x = torch.randn(args.batch, args.channels, args.frames, size, size, device=device)
    fn = (lambda: block(x)) if impl == "block" else (lambda: reference(block, x))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        fn()
        sync()
        if device.type == "cuda":
            peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**10
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "peak_mib": peak_mib}


def slope(ns: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(np.maximum(values, 1e-3)), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="embedded_gaussian")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32], help="H = W of the map")
    parser.add_argument("--frames", type=int, default=4, help="T of the map")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--subsample", action="store_true", help="max-pool phi and g (M = N/4)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args)))
        return

    passthrough = [a for a in sys.argv[1:]]
    ns = [args.frames * s * s for s in args.sizes]
    rows = {}
    for impl in ("block", "reference"):
        for size in args.sizes:
            out = subprocess.run(
                [sys.executable, "-m", "bench.nonlocal", *passthrough, "--child", impl, str(size)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rows[impl, size] = json.loads(out.stdout.strip().splitlines()[-1])

    print(
        f"non-local block ({args.mode}, C={args.channels}, batch {args.batch}, T={args.frames}, "
        f"subsample={args.subsample}) on {args.device}, {args.threads} thread(s)"
    )
    print(
        f"{'N':>7} | {'block ms':>9} {'ref ms':>9} {'ref/block':>9} | {'block MiB':>9} {'ref MiB':>9} {'ref/block':>9}"
    )
    for n, size in zip(ns, args.sizes, strict=True):
        b, r = rows["block", size], rows["reference", size]
        print(
            f"{n:>7} | {b['ms']:>9.2f} {r['ms']:>9.2f} {r['ms'] / b['ms']:>9.2f} | "
            f"{b['peak_mib']:>9.1f} {r['peak_mib']:>9.1f} {r['peak_mib'] / max(b['peak_mib'], 1e-3):>9.2f}"
        )
    for impl in ("block", "reference"):
        t = slope(ns, [rows[impl, s]["ms"] for s in args.sizes])
        m = slope(ns, [rows[impl, s]["peak_mib"] for s in args.sizes])
        print(f"growth exponent ({impl:>9}): time ~ N^{t:.2f}, memory ~ N^{m:.2f}")


if __name__ == "__main__":
    main()
