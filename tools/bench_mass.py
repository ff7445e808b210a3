#!/usr/bin/env python3
"""Times the author's PyTorch IRIS model (Stanford-AIMI/MASS) the way
iris-bench times iris, for a side-by-side ratio on the same machine.

  /usr/bin/python3 tools/bench_mass.py --mass /path/to/MASS --patch 64 --threads 2 \
      --channels 8 16 32 32 64 --classes 3 --repeats 3
  build/iris-bench --set channels=[8,16,32,32,64] --set blocks_per_stage=[2,2,2,2] \
      --set query_tokens=10 --set memory_bank_size=5 --patch 64 --threads 2 --classes 3 --repeats 3

Needs Debian's python3-torch; MASS imports einops without using it, so a stub
module is installed. Never vendor MASS code into this repository.
"""
import argparse, json, statistics, sys, time, types

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mass", required=True, help="path of a MASS checkout")
    ap.add_argument("--channels", type=int, nargs=5, default=[32, 64, 128, 256, 512])
    ap.add_argument("--blocks", type=int, nargs=4, default=[2, 2, 2, 2])
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sys.modules.setdefault("einops", types.SimpleNamespace(rearrange=None))
    registry = types.ModuleType("utils.registry")
    registry.register_model = lambda name: (lambda cls: cls)
    sys.modules["utils"] = types.ModuleType("utils")
    sys.modules["utils.registry"] = registry
    sys.path.insert(0, a.mass)
    from models.iris import Iris  # noqa: E402

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = Iris(in_ch=1, channels=a.channels, num_block=a.blocks, tn=5)
    n_params = sum(p.numel() for p in net.parameters())
    img = torch.randn(a.batch, 1, a.patch, a.patch, a.patch)
    masks = (torch.rand(a.batch, a.classes, a.patch, a.patch, a.patch) > 0.7).float()

    def measure(step):
        for _ in range(a.warmup):
            step()
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1000)
        return {"median_ms": statistics.median(times), "min_ms": min(times)}

    net.eval()
    with torch.no_grad():
        fwd = measure(lambda: net(img, img, masks))
    net.train()

    def train_step():
        net.zero_grad()
        out = net(img, img, masks)
        torch.nn.functional.binary_cross_entropy_with_logits(out, masks).backward()

    fb = measure(train_step)
    print(json.dumps({"tool": "bench_mass.py", "torch_version": torch.__version__, "threads": a.threads,
                      "parameters": n_params, "patch": a.patch, "batch": a.batch, "classes": a.classes,
                      "forward": fwd, "forward_backward": fb}, indent=2))


if __name__ == "__main__":
    main()
