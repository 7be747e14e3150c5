"""The lean forward's linear layers: oneDNN's kernels vs ``torch.nn.functional.linear``'s BLAS.

:func:`alignbench.lean_forward.linear` (what ``algo.lean_forward=true`` and
``reward.lean_forward=true`` run their linear layers through) calls oneDNN on the CPU in float32
for products of at least ``ONEDNN_MIN_ROWS`` rows and outputs. PyTorch's own
``torch.nn.functional.linear`` calls its BLAS (MKL in the wheels), which picks its kernels by CPU
vendor. This script times both, interleaved call by call, on the products of a PPO step of
``benchmarks/ppo_step.py`` (16 sequences of 47 tokens fed = 752 rows; the model's 128, 512 and
1024 widths): the output ``x @ W^T``, the input gradient ``g @ W`` and the weight gradient
``g^T @ x``, and prints each one's GFLOP/s and the ratio, with the largest gap between the two
results relative to the result's largest entry (rounding: the kernels add in other orders).

    python benchmarks/matmul.py [--repeats 200] [--threads 1]
    python benchmarks/matmul.py --smoke   # tiny sizes, 2 repeats: does it still run?
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _common import cpu_name

from alignbench import lean_forward

#: (rows, inputs, outputs): the policy's and critic's projections, the output layer.
FULL = [(752, 128, 128), (752, 128, 512), (752, 512, 128), (512, 128, 1024)]
SMOKE = [(64, 16, 64)]


def timed(fn: Callable[[], torch.Tensor], seconds: list[float]) -> torch.Tensor:
    """Run ``fn`` once, appending its wall time to ``seconds``."""
    start = time.perf_counter()
    out = fn()
    seconds.append(time.perf_counter() - start)
    return out


def _torch_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight^T`` through torch (what ``lean_forward.linear`` is without oneDNN)."""
    return torch.nn.functional.linear(x, weight, bias)


def products_of(
    x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor
) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    """A linear layer's three products, each as (torch's call, oneDNN's call)."""
    onednn = lean_forward._onednn if lean_forward._ONEDNN is not None else _torch_product
    return {
        "output x @ W^T": (lambda: x @ w.t(), lambda: onednn(x, w, None)),
        "input grad g @ W": (lambda: grad @ w, lambda: onednn(grad, w.t(), None)),
        "weight grad g^T @ x": (lambda: grad.t() @ x, lambda: onednn(grad.t(), x.t(), None)),
    }


def main() -> None:
    """Print, per product, the median GFLOP/s of both kernels and oneDNN's speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 repeats")
    args = parser.parse_args()
    shapes, repeats = (SMOKE, 2) if args.smoke else (FULL, args.repeats)
    torch.set_num_threads(args.threads)
    smoke = " (smoke: tiny sizes, timings meaningless)" if args.smoke else ""
    print(f"{cpu_name()}; torch {torch.__version__}; threads: {torch.get_num_threads()}{smoke}")
    if lean_forward._ONEDNN is None:  # then lean_forward.linear is torch's: timed as itself
        print("this PyTorch build has no oneDNN linear: both columns are torch's kernels")
    print(f"median of {repeats} interleaved calls each\n")
    print("| product | shape | torch (GFLOP/s) | oneDNN (GFLOP/s) | oneDNN speed-up | gap |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    ratios = []
    for m, k, n in shapes:
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        grad = torch.randn(m, n, generator=g)
        products = products_of(x, w, grad)
        for name, (theirs, ours) in products.items():
            times: tuple[list[float], list[float]] = ([], [])
            for i in range(repeats + 3):
                a = timed(theirs, times[0])
                b = timed(ours, times[1])
                if i < 3:  # warm-up
                    times[0].clear(), times[1].clear()
            gap = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
            flops = 2 * m * k * n
            speed = [flops / statistics.median(t) / 1e9 for t in times]
            ratios.append(speed[1] / speed[0])
            print(
                f"| {name} | {m}x{k}x{n} | {speed[0]:.0f} | {speed[1]:.0f} | "
                f"{speed[1] / speed[0]:.2f} | {gap:.1e} |"
            )
    print(
        f"\noneDNN GFLOP/s / torch GFLOP/s = {statistics.median(ratios):.2f} "
        "(the median of the products' ratios)"
    )


if __name__ == "__main__":
    main()
