"""Forward time and achieved GFLOP/s of the AnySat ``base`` architecture (random weights).

Cases (as in SPEC section 10): the real TreeSatAI tile (aerial 300x300 + s2 T=146 + s1 T=60,
60 m) at patch 10 m, and a 1280 m x 1280 m Sentinel-2 tile (T=12) at patch 40 m; batch 1 and 8;
float32 and bfloat16 (weights and inputs cast), with the bf16 error against float32.

    python benchmarks/model.py                 # CPU, 2 threads, batch 1 and 8 (the 1280 m tile at batch 8 takes minutes)
    python benchmarks/model.py --quick         # batch 1 only
    python benchmarks/model.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from xanysat import AnySat, AnySatConfig
from xanysat.testing import synthetic_batch

OFFICIAL_CPU_S_PER_TILE = {"treesatai": 1.1, "s2-1280m": 24.0}  # SPEC section 10, same 2 cores
MATMUL_PEAK_GFLOPS = {torch.float32: 165.0, torch.bfloat16: 370.0}  # plain 2-thread matmul here


def treesatai_batch(batch_size: int) -> dict[str, torch.Tensor]:
    from xanysat.cube.sample_data import treesatai_tile

    tile = treesatai_tile()["batch"]
    return {k: v.expand(batch_size, *v.shape[1:]).contiguous() for k, v in tile.items()}


def s2_batch(batch_size: int) -> dict[str, torch.Tensor]:
    return synthetic_batch(("s2",), extent_m=1280, batch_size=batch_size, n_dates=12)


CASES = {"treesatai": (treesatai_batch, 10), "s2-1280m": (s2_batch, 40)}


def cast(batch, dtype, device):
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, batch, patch_size, device, reps):
    times = []
    with torch.inference_mode():
        out = model(batch, patch_size, "patch")  # warm-up
        for _ in range(reps):
            sync(device)
            start = time.perf_counter()
            out = model(batch, patch_size, "patch")
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times), out


def count_flops(model, batch, patch_size):
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(batch, patch_size, "patch")
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 1 only")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model32 = AnySat(AnySatConfig.base()).eval().to(device)
    model16 = AnySat(AnySatConfig.base()).eval().to(device)
    model16.load_state_dict(model32.state_dict())
    model16.to(torch.bfloat16)
    print(f"device {device} threads {torch.get_num_threads()} torch {torch.__version__}")
    header = ("case", "batch", "dtype", "s/forward", "s/tile", "GFLOP/tile", "GFLOP/s", "of peak",
              "x official", "rel err vs f32")
    print(" | ".join(header))
    for case in args.cases:
        make, patch_size = CASES[case]
        for batch_size in (1,) if args.quick else (1, 8):
            batch = make(batch_size)
            reference = None
            for dtype, model in ((torch.float32, model32), (torch.bfloat16, model16)):
                inputs = cast(batch, dtype, device)
                reps = 3 if batch_size == 1 else 1
                seconds, out = time_forward(model, inputs, patch_size, device, reps)
                flops = count_flops(model, inputs, patch_size)
                error = ""
                if reference is None:
                    reference = out.float()
                else:
                    error = f"{((out.float() - reference).norm() / reference.norm()).item():.2e}"
                per_tile = seconds / batch_size
                gflops = flops / seconds / 1e9
                peak = f"{gflops / MATMUL_PEAK_GFLOPS[dtype]:.0%}" if device.type == "cpu" else "-"
                speedup = f"{OFFICIAL_CPU_S_PER_TILE[case] / per_tile:.2f}" if device.type == "cpu" else "-"
                row = (case, batch_size, str(dtype).replace("torch.", ""), f"{seconds:.3f}", f"{per_tile:.3f}",
                       f"{flops / batch_size / 1e9:.1f}", f"{gflops:.0f}", peak, speedup, error)
                print(" | ".join(str(c) for c in row), flush=True)


if __name__ == "__main__":
    main()
