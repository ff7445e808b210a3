#!/usr/bin/env python3
"""Times the author's PyTorch IRIS model (Stanford-AIMI/MASS) the way
iris-bench times iris, for a side-by-side ratio on the same machine.

  /usr/bin/python3 tools/bench_mass.py --mass /path/to/MASS --patch 64 --threads 2 \
      --channels 8 16 32 32 64 --classes 3 --repeats 3
  build/iris-bench --set channels=[8,16,32,32,64] --set blocks_per_stage=[2,2,2,2] \
      --set query_tokens=10 --set memory_bank_size=5 --patch 64 --threads 2 --classes 3 --repeats 3

Needs a torch (Debian's python3-torch, or a CUDA PyTorch with --device cuda);
MASS imports einops without using it, so a stub module is installed. Never
vendor MASS code into this repository.

On a GPU, the same measurements as iris-bench --device cuda [--bf16]:
  python3 tools/bench_mass.py --mass MASS --device cuda --bf16 --batch 2 --classes 15 --queries 10
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
    ap.add_argument("--queries", type=int, default=1, help="queries segmented with one encoded reference")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward passes (as iris-bench --bf16)")
    ap.add_argument("--no-backward", action="store_true", help="skip the forward+backward measurement (as iris-bench)")
    ap.add_argument("--no-forward", action="store_true", help="skip the plain forward measurement (as iris-bench)")
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
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    net = Iris(in_ch=1, channels=a.channels, num_block=a.blocks, tn=5).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    img = torch.randn(a.batch, 1, a.patch, a.patch, a.patch, device=device)
    masks = (torch.rand(a.batch, a.classes, a.patch, a.patch, a.patch, device=device) > 0.7).float()

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.bf16)

    def measure(step):
        for _ in range(a.warmup):
            step()
        times = []
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(a.repeats):
            t = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t) * 1000)
        peak = torch.cuda.max_memory_allocated(device) if cuda else 0
        return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_bytes": peak}

    net.eval()
    fwd = None
    if not a.no_forward:
        with torch.no_grad(), autocast():
            fwd = measure(lambda: net(img, img, masks))
    # The paper's inference workload: one reference encoded once, then every
    # query decoded with the encoded prior (MASS's forward_with_encoded_prior).
    ref, ref_masks = img[:1], masks[:1]
    query = torch.randn(1, 1, a.patch, a.patch, a.patch, device=device)

    def inference():
        prior = net.encode_visual_prior(net.encode_image_feature(ref), ref_masks)
        for _ in range(a.queries):
            net.forward_with_encoded_prior(query, prior).sigmoid()

    with torch.no_grad(), autocast():
        infer = measure(inference)
    net.train()

    def train_step():
        net.zero_grad()
        with autocast():
            out = net(img, img, masks)
        torch.nn.functional.binary_cross_entropy_with_logits(out.float(), masks).backward()

    fb = None if a.no_backward else measure(train_step)
    print(json.dumps({"tool": "bench_mass.py", "torch_version": torch.__version__, "device": str(device),
                      "bf16": a.bf16, "threads": a.threads, "parameters": n_params, "patch": a.patch,
                      "batch": a.batch, "classes": a.classes, "queries": a.queries,
                      "inference_one_reference": infer, "forward": fwd, "forward_backward": fb}, indent=2))


if __name__ == "__main__":
    main()
