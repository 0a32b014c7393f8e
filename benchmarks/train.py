"""JEPA training throughput (samples/s) and peak memory, per configuration, each in a fresh process.

Batches of synthetic Sentinel-2 + Sentinel-1 tiles (``--tile`` metres, ``--dates`` dates) at
patch 20 m through ``xanysat.train.jepa.JEPA`` (student, EMA teacher, predictor, both losses,
AdamW step), as ``xanysat.train.loop.pretrain`` runs them.

    python benchmarks/train.py                    # tiny and base, CPU, 2 threads
    python benchmarks/train.py --configs tiny --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from xanysat.train.jepa import JEPA, JEPAConfig
from xanysat.train.schedules import build_optimizer
from xanysat.nn.encoder import AnySat, AnySatConfig
from xanysat.testing import synthetic_batch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
device = torch.device(args["device"])
config = getattr(AnySatConfig, args["config"])(sensors=("s2", "s1-asc"))
jepa = JEPA(AnySat(config)).to(device).train()
opt = build_optimizer(jepa, lr=1e-4)
batches = [{k: v.to(device) for k, v in synthetic_batch(("s2", "s1-asc"), extent_m=args["tile"], batch_size=args["batch"],
           n_dates=args["dates"], seed=i).items()} for i in range(2)]
def step(i):
    opt.zero_grad(set_to_none=True)
    out = jepa(batches[i % 2], 20)
    out.loss.backward()
    jepa.update_teacher(0.996)
    opt.step()
    return float(out.loss)
step(0)
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for i in range(args["steps"]):
    step(i)
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
params = sum(p.numel() for p in jepa.student.parameters())
print(json.dumps({"seconds_per_step": seconds / args["steps"], "samples_per_s": args["steps"] * args["batch"] / seconds,
                  "peak_mb": peak, "params_m": params / 1e6}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=160, help="tile side in metres (patch 20 m)")
    parser.add_argument("--dates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"JEPA training, s2 + s1-asc, {args.tile} m tiles, {args.dates} dates, batch {args.batch}, patch 20 m, "
          f"{args.device}, {args.threads} threads")
    print("config | params (student) | s/step | samples/s | peak memory")
    for config in args.configs:
        child = {"config": config, "steps": args.steps, "batch": args.batch, "tile": args.tile, "dates": args.dates,
                 "threads": args.threads, "device": args.device}
        result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True)
        if result.returncode:
            print(f"{config}: failed\n{result.stderr[-2000:]}")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        memory = "GPU max allocated" if args.device.startswith("cuda") else "RSS"
        print(f"{config} | {r['params_m']:.1f} M | {r['seconds_per_step']:.2f} | {r['samples_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} MB {memory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
