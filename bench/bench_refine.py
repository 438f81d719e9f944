"""Time and squared error of the per-group refinement search, "full" against "coarse"
(QuantConfig.refine_search), on one random heavy-tailed block, one CPU thread.

    python bench/bench_refine.py            # 4 chunks x 256 rows x 576 columns, depths 1..5
"""
import argparse
import time

import torch

from radio import torch_quant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[4, 256, 576], metavar=("B", "R", "K"))
    p.add_argument("--quantizer", choices=["laplace", "uniform"], default="laplace")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    b, r, k = args.shape
    block = torch.randn(b, r, k) * torch.rand(1, 1, k)
    depth = torch.randint(1, 6, (b, k))
    mu0 = torch_quant.base_location(block, args.quantizer, False)
    spread = torch_quant.rms_about(block, mu0)
    s0 = torch_quant.base_scale(block, spread, depth, args.quantizer, False)
    levels = torch.pow(2.0, depth.float())
    table = torch_quant.lut(args.quantizer, block.device)

    def error(loc, scale) -> float:
        return float(torch_quant._squared_error(block, loc, scale, levels, depth, table,
                                                args.quantizer).sum())

    print(f"unrefined: squared error {error(torch_quant.to_half(mu0), torch_quant.to_half(s0)):.2f}")
    for search in torch_quant.REFINE_SEARCHES:
        t = time.perf_counter()
        loc, scale = torch_quant.refine(block, mu0, s0, spread, depth, args.quantizer, False, search)
        seconds = time.perf_counter() - t
        print(f"{search:>7}: {seconds:.3f} s, squared error {error(loc, scale):.2f}")


if __name__ == "__main__":
    main()
