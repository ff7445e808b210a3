#!/usr/bin/env python3
"""One training step of the author's IRIS code (Stanford-AIMI/MASS), as a test fixture.

Usage:
  python3 tools/make_mass_train_step.py --mass /path/to/MASS/checkout \
      --out tests/fixtures/mass_train_step

The MASS checkout is only imported, never copied (stubs as in make_mass_fixtures.py).
Starting from the tiny model of tests/fixtures/mass_tiny/model.pt (same weights, no
second model file), one batch of two episodes with three class slots, the last slot
of the second episode padding, goes through what MASS's trainer does per iteration
(training/trainer_ss.py): forward in train mode; BinaryDiceLoss (the adaptive
Tversky form) + BinaryCrossEntropyLoss, weight 1 each, with tgt_idx marking the
padding slot -1; backward; torch.nn.utils.clip_grad_norm_(max_norm=1.0); one step
of MASS's Lamb (lr 2e-3, betas (0.9, 0.999), weight decay 1e-5, its default eps);
the weight EMA with decay 0.99 (the EMA model starts as a copy of the model).

The step runs three times: in float32; with torch.autocast("cpu", bfloat16) around
forward and loss as MASS's trainer does on CUDA (the author's own distance from
float32, the tolerance iris's bf16 step is held to); and in float64, where
rounding cannot hide or fake a difference in the algorithm (BinaryDiceLoss
still casts its TP/FP/FN sums to float32: the float64 run rounds there).

Writes to --out:
  query_image.bin, query_masks.bin, reference_image.bin, reference_masks.bin
                       float32 little-endian, C order, shapes in meta.json
  digests.bin          float32 digests (below) of logits, every parameter's
                       gradient before clipping, its change in the Lamb step
                       (w1 - w0) and the EMA's change (ema1 - w0), per run
  meta.json            hyper-parameters, loss terms, alpha per slot, total gradient
                       norm, the digest layout, bf16-vs-fp32 distances, versions

Digest of a tensor t (flattened, n elements): the tensor itself if n <= 64,
otherwise 32 numbers s_r = sum_i sign(r, i) * t_i / sqrt(32) with sign(r, i) = +1 or -1 from
the top bit of splitmix64((r << 32) | i). The rows are a random projection, so
|digest(t)| estimates |t| and |digest(a) - digest(b)| / |digest(b)| estimates
|a - b| / |b| for the whole tensor;
iris computes the same digest (tests/train/mass_train_step_test.cpp).
"""
import argparse
import hashlib
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mass_fixtures as fixtures  # noqa: E402

SIZE = 32
BATCH = 2
SLOTS = 3
LR = 2e-3
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 1e-5
CLIP = 1.0
EMA_DECAY = 0.99
FULL_LIMIT = 64
SKETCH_ROWS = 32
SIGNIFICANT = 1e-5


def splitmix64(x):
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def digest(tensor):
    flat = tensor.detach().to(torch.float64).reshape(-1).cpu().numpy()
    n = flat.size
    if n <= FULL_LIMIT:
        return flat.astype(np.float32)
    index = np.arange(n, dtype=np.uint64)
    rows = []
    for r in range(SKETCH_ROWS):
        bits = splitmix64((np.uint64(r) << np.uint64(32)) | index) >> np.uint64(63)
        sign = 1.0 - 2.0 * bits.astype(np.float64)
        rows.append(float((sign * flat).sum()) / np.sqrt(SKETCH_ROWS))
    return np.array(rows, dtype=np.float32)


def episode_batch():
    """Two episodes, three class slots each; slot 2 of episode 1 is padding (tgt_idx -1)
    whose masks are not empty, so a loss that does not zero its weight shows. Class 1 of
    episode 0 covers most of the volume, so at initialisation FP/(FP+FN) falls below 0.2
    there and above 0.8 for the small structures: both ends of the clamp are active."""
    gen = torch.Generator().manual_seed(7)
    q = [fixtures.blob_volume(gen, SIZE, [(10, 12, 14, 4, 1.0), (22, 20, 18, 6, 0.7)], 0.05),
         fixtures.blob_volume(gen, SIZE, [(15, 16, 12, 5, 0.9), (9, 22, 21, 4, 0.6)], 0.05)]
    r = [fixtures.blob_volume(gen, SIZE, [(11, 13, 13, 4, 1.0), (21, 21, 19, 6, 0.8)], 0.05),
         fixtures.blob_volume(gen, SIZE, [(16, 15, 13, 5, 1.0), (10, 21, 20, 4, 0.7)], 0.05)]
    s = fixtures.sphere_mask
    big_q = 1.0 - s(SIZE, 16, 16, 16, 6)
    big_r = 1.0 - s(SIZE, 15, 17, 16, 6)
    query_masks = torch.stack([
        torch.stack([s(SIZE, 10, 12, 14, 4), big_q, s(SIZE, 22, 20, 18, 6)]),
        torch.stack([s(SIZE, 15, 16, 12, 5), s(SIZE, 9, 22, 21, 4), s(SIZE, 20, 10, 10, 3)]),
    ])
    reference_masks = torch.stack([
        torch.stack([s(SIZE, 11, 13, 13, 4), big_r, s(SIZE, 21, 21, 19, 6)]),
        torch.stack([s(SIZE, 16, 15, 13, 5), s(SIZE, 10, 21, 20, 4), s(SIZE, 19, 11, 10, 3)]),
    ])
    tgt_idx = torch.tensor([[0, 1, 2], [0, 3, -1]])
    return torch.cat(q), torch.cat(r), reference_masks, query_masks, tgt_idx


def load_model(iris_class, model_path, dtype):
    torch.manual_seed(0)
    model = iris_class(**fixtures.TINY_CONFIG)
    fixtures.shrink_positional_embeddings(model, SIZE)
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(dtype)


def alphas(logits, masks):
    """The clamped alpha of MASS's BinaryDiceLoss per (item, slot), for the record."""
    p = torch.sigmoid(logits.float()).reshape(BATCH * SLOTS, -1)
    y = masks.reshape(BATCH * SLOTS, -1)
    fp = (p * (1 - y)).sum(1)
    fn = ((1 - p) * y).sum(1)
    raw = fp / (fp + fn + 1e-6)
    return raw.reshape(BATCH, SLOTS), raw.clamp(0.2, 0.8).reshape(BATCH, SLOTS)


def train_step(iris_class, lamb_class, criteria, model_path, batch, bf16, dtype=torch.float32):
    query, reference, reference_masks, query_masks, tgt_idx = batch
    query, reference = query.to(dtype), reference.to(dtype)
    reference_masks, query_masks = reference_masks.to(dtype), query_masks.to(dtype)
    model = load_model(iris_class, model_path, dtype)
    model.train()
    ema = load_model(iris_class, model_path, dtype)
    w0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = lamb_class(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(query, reference, reference_masks, update_buffer=False)
        dice = criteria["dice"](logits, query_masks, tgt_idx)
        bce = criteria["bce"](logits, query_masks, tgt_idx)
        loss = 1.0 * dice + 1.0 * bce
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    total_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=CLIP)
    optimizer.step()
    with torch.no_grad():
        for param, ema_param in zip(model.parameters(), ema.parameters()):
            ema_param.data.mul_(EMA_DECAY).add_(param.data, alpha=1 - EMA_DECAY)
    params = dict(model.named_parameters())
    ema_params = dict(ema.named_parameters())
    return {
        "logits": logits.detach().float(),
        "loss": float(loss.detach()), "dice": float(dice.detach()), "bce": float(bce.detach()),
        "grad_norm": float(total_norm),
        "grads": grads,
        "delta": {k: params[k].detach() - w0[k] for k in w0},
        "ema_delta": {k: ema_params[k].detach() - w0[k] for k in w0},
        "names": list(w0.keys()),
        "numel": {k: w0[k].numel() for k in w0},
    }


def import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)) /
                 max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mass", required=True, help="checkout of Stanford-AIMI/MASS")
    parser.add_argument("--model", default="tests/fixtures/mass_tiny/model.pt")
    parser.add_argument("--out", default="tests/fixtures/mass_train_step")
    parser.add_argument("--mass-commit", default=None)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    iris_class = fixtures.import_iris_class(args.mass)
    registry = sys.modules["utils.registry"]
    registry.register_criterion = lambda name=None: (lambda cls: cls)
    registry.register_optimizer = lambda name=None: (lambda cls: cls)
    # By file, not by package: training/__init__.py imports the whole trainer
    # (tensorboard, data loaders), which this step does not need.
    losses = import_file(os.path.join(args.mass, "metrics", "losses.py"), "mass_losses")
    lamb = import_file(os.path.join(args.mass, "training", "lamb_optimizer.py"), "mass_lamb")
    Lamb = lamb.Lamb
    criteria = {"dice": losses.BinaryDiceLoss(), "bce": losses.BinaryCrossEntropyLoss()}

    batch = episode_batch()
    fp32 = train_step(iris_class, Lamb, criteria, args.model, batch, bf16=False)
    # oneDNN's bf16 conv3d weight gradient at the 2^3 deepest stage returns
    # garbage (up to 1e34) in about half the runs on torch 2.15 CPU; PyTorch's
    # own kernels are exact and repeatable, so the bf16 reference uses those.
    torch.backends.mkldnn.enabled = False
    bf16 = train_step(iris_class, Lamb, criteria, args.model, batch, bf16=True)
    torch.backends.mkldnn.enabled = True
    # float64: no rounding worth the name on either side, so what remains of a
    # difference is a difference in the algorithm.
    fp64 = train_step(iris_class, Lamb, criteria, args.model, batch, bf16=False, dtype=torch.float64)
    raw_alpha, alpha = alphas(fp32["logits"], batch[3])

    tensors = {}
    for name, t in zip(["query_image", "reference_image", "reference_masks", "query_masks"],
                       [batch[0], batch[1], batch[2], batch[3]]):
        fixtures.save_bin(args.out, name, t, tensors)

    # digests.bin: per run (fp32, bf16), the logits, then per parameter (state-dict
    # order) grad, delta, ema_delta.
    chunks, offset = [], 0
    digests = {}

    def put(run, what, name, t):
        nonlocal offset
        d = digest(t)
        chunks.append(d)
        digests[(run, what, name)] = d
        offset += int(d.size)

    for run, r in [("fp32", fp32), ("bf16", bf16), ("fp64", fp64)]:
        put(run, "logits", "", r["logits"])
        for k in r["names"]:
            put(run, "grad", k, r["grads"][k])
            put(run, "delta", k, r["delta"][k])
            put(run, "ema_delta", k, r["ema_delta"][k])
    data = np.concatenate(chunks).astype("<f4").tobytes()
    with open(os.path.join(args.out, "digests.bin"), "wb") as f:
        f.write(data)

    # The author's own bf16 distance from its float32 step.
    # Parameters whose gradient is below 1e-5 of the total norm get only rounding
    # noise (about 1e-9 here): relative distances there mean nothing.
    significant = [k for k in fp32["names"]
                   if np.linalg.norm(digests[("fp32", "grad", k)]) >= SIGNIFICANT * fp32["grad_norm"]]

    def worst(what):
        return max(relative(digests[("bf16", what, k)], digests[("fp32", what, k)]) for k in significant)

    def median(what):
        return float(np.median([relative(digests[("bf16", what, k)], digests[("fp32", what, k)])
                                for k in significant]))

    bf16_vs_fp32 = {
        "loss": abs(bf16["loss"] - fp32["loss"]) / abs(fp32["loss"]),
        "logits": relative(digests[("bf16", "logits", "")], digests[("fp32", "logits", "")]),
        "grad_norm": abs(bf16["grad_norm"] - fp32["grad_norm"]) / fp32["grad_norm"],
        "grad_worst": worst("grad"), "grad_median": median("grad"),
        "delta_worst": worst("delta"), "delta_median": median("delta"),
        "ema_delta_worst": worst("ema_delta"), "ema_delta_median": median("ema_delta"),
    }
    meta = {
        "generator": "tools/make_mass_train_step.py",
        "torch_version": torch.__version__,
        "mass_commit": args.mass_commit or fixtures.mass_commit(args.mass),
        "model": "tests/fixtures/mass_tiny/model.pt",
        "model_sha256": hashlib.sha256(open(args.model, "rb").read()).hexdigest(),
        "batch": BATCH, "slots": SLOTS, "size": SIZE,
        "tgt_idx": batch[4].tolist(),
        "hyper_parameters": {"lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY,
                             "eps": 1e-6, "grad_clip": CLIP, "ema_decay": EMA_DECAY,
                             "dice_weight": 1.0, "bce_weight": 1.0},
        "tensors": tensors,
        "digest": {"full_limit": FULL_LIMIT, "sketch_rows": SKETCH_ROWS,
                   "scale": "sketch rows are divided by sqrt(sketch_rows)",
        "sign": "top bit of splitmix64((row << 32) | index): 1 -> -1, 0 -> +1"},
        "fp32": {"loss": fp32["loss"], "dice": fp32["dice"], "bce": fp32["bce"],
                 "grad_norm": fp32["grad_norm"]},
        "bf16": {"loss": bf16["loss"], "dice": bf16["dice"], "bce": bf16["bce"],
                 "grad_norm": bf16["grad_norm"]},
        "fp64": {"loss": fp64["loss"], "dice": fp64["dice"], "bce": fp64["bce"],
                 "grad_norm": fp64["grad_norm"]},
        "alpha_unclamped": raw_alpha.tolist(),
        "alpha": alpha.tolist(),
        "bf16_vs_fp32": bf16_vs_fp32,
        "bf16_kernels": "torch.backends.mkldnn.enabled = False (oneDNN's bf16 conv3d backward is not "
                        "repeatable on CPU at a 2^3 input)",
        "significant_parameters": len(significant),
        "digest_order": "for run in (fp32, bf16, fp64): logits, then for each parameter in the "
                        "order of 'parameters': grad, delta, ema_delta",
        "parameters": [[k, fp32["numel"][k]] for k in fp32["names"]],
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        f.write(fixtures.compact_json(meta) + "\n")
    print(json.dumps({k: meta[k] for k in ["fp32", "bf16", "fp64", "alpha_unclamped", "bf16_vs_fp32"]}, indent=1))
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
