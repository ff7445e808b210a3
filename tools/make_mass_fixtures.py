#!/usr/bin/env python3
"""Reference outputs of the author's IRIS model (Stanford-AIMI/MASS) for a tiny config.

Usage:
  python3 tools/make_mass_fixtures.py --mass /path/to/MASS/checkout --out tests/fixtures/mass_tiny

The MASS checkout is only imported, never copied. It needs torch and numpy; its
`einops` import (unused on this path) and its `utils.registry` are stubbed.

Writes to --out:
  model.pt             torch.save(model.state_dict()) of the tiny model (zip format)
  *.bin                raw little-endian float32 tensors, C order (see meta.json "tensors")
  meta.json            config, shapes, state-dict keys with shapes, versions, the
                       full-size "mass" preset's parameter count

The tiny model differs from the author's init in three ways, all documented in
docs/fixtures.md: parameters that start constant (norm weights, biases) get small
random values, every parameter and buffer is rounded to the bfloat16 grid (still
stored as float32; only so that git compresses the file), and each positional embedding is cut from 1x1x128^3 to its first
1x1x32^3 corner, which the forward pass slices anyway at a 32^3 input.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import types

import torch
import torch.nn as nn

TINY_CONFIG = dict(in_ch=1, channels=[8, 16, 32, 32, 64], num_block=[2, 2, 2, 2], tn=5,
                   num_prior_stage=3)
MASS_PRESET = dict(in_ch=1, channels=[32, 64, 128, 256, 512], num_block=[2, 2, 2, 2], tn=72)
INPUT_SIZE = 32
NUM_CLASSES = 2
MEMORY_BANK_IDX = [[0, 3]]


def import_iris_class(mass_dir):
    """Imports models.iris.Iris from the checkout with stand-ins for what it does not need."""
    einops = types.ModuleType("einops")

    def rearrange(*args, **kwargs):
        raise NotImplementedError("einops stub: not used by the Iris forward pass")

    einops.rearrange = rearrange
    sys.modules.setdefault("einops", einops)

    utils = types.ModuleType("utils")
    registry = types.ModuleType("utils.registry")
    registry.register_model = lambda name=None: (lambda cls: cls)
    utils.registry = registry
    sys.modules["utils"] = utils
    sys.modules["utils.registry"] = registry

    sys.path.insert(0, os.path.abspath(mass_dir))
    from models.iris import Iris  # noqa: E402

    return Iris


def mass_commit(mass_dir):
    try:
        return subprocess.run(["git", "-C", mass_dir, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def randomise_constant_parameters(model, generator):
    """LayerNorm weights/biases and conv/linear biases start constant (1 or 0); give
    them small random values so a wrong mapping of any of them shows in the outputs."""
    changed = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() > 0 and bool((param == param.reshape(-1)[0]).all()):
                noise = 0.1 * torch.randn(param.shape, generator=generator)
                param.add_(noise)
                changed.append(name)
    return changed


def round_to_bfloat16_grid(model):
    """Keeps float32 storage but zeroes the low 16 mantissa bits of every parameter
    and buffer, so git's zlib packs model.pt to about half its 11 MB."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.bfloat16).to(tensor.dtype))


def shrink_positional_embeddings(model, size):
    """The 1x1x128^3 embeddings dominate the file (25 MB); the forward pass slices
    [:D, :H, :W], so at a size^3 input only the first size^3 corner matters."""
    for layer in model.task_embedding:
        full = layer.pos_embed.embedding
        layer.pos_embed.embedding = nn.Parameter(full[:, :, :size, :size, :size].clone())


def blob_volume(generator, size, centres, noise):
    """Smooth synthetic intensities: Gaussian blobs plus a little noise."""
    axis = torch.arange(size, dtype=torch.float32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros(size, size, size)
    for (cz, cy, cx, radius, amplitude) in centres:
        d2 = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2
        volume += amplitude * torch.exp(-d2 / (2 * radius ** 2))
    volume += noise * torch.randn(size, size, size, generator=generator)
    return ((volume - volume.mean()) / volume.std()).reshape(1, 1, size, size, size)


def sphere_mask(size, cz, cy, cx, radius):
    axis = torch.arange(size, dtype=torch.float32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= radius ** 2).float()


def save_bin(out_dir, name, tensor, index):
    tensor = tensor.detach().to(torch.float32).contiguous().cpu()
    path = os.path.join(out_dir, name + ".bin")
    data = tensor.numpy().astype("<f4").tobytes()
    with open(path, "wb") as f:
        f.write(data)
    index[name] = {"file": name + ".bin", "shape": list(tensor.shape), "dtype": "float32",
                   "sha256": hashlib.sha256(data).hexdigest()}


def compact_json(value, indent=""):
    """JSON with one line per innermost object or short list, so meta.json stays
    readable and small (571 state-dict entries)."""
    inner = indent + " "

    def simple(v):
        return not isinstance(v, (dict, list)) or (
            isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v))

    if isinstance(value, dict) and not all(simple(v) for v in value.values()):
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and not all(simple(v) for v in value):
        items = [inner + compact_json(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mass", required=True, help="checkout of Stanford-AIMI/MASS")
    parser.add_argument("--out", default="tests/fixtures/mass_tiny")
    parser.add_argument("--mass-commit", default=None,
                        help="commit to record when --mass is an exported tree, not a git checkout")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # reproducible summation order on any machine

    Iris = import_iris_class(args.mass)

    # Parameter count of the full-size preset (spec: about 120.1 M).
    full = Iris(**MASS_PRESET)
    mass_param_count = sum(p.numel() for p in full.parameters())
    mass_buffer_count = sum(b.numel() for b in full.buffers())
    print(f"mass preset: {mass_param_count} parameters ({mass_param_count / 1e6:.1f} M), "
          f"{mass_buffer_count} buffer elements")
    del full

    torch.manual_seed(0)
    model = Iris(**TINY_CONFIG)
    generator = torch.Generator().manual_seed(1)
    randomised = randomise_constant_parameters(model, generator)
    round_to_bfloat16_grid(model)
    model.eval()

    size = INPUT_SIZE
    data_gen = torch.Generator().manual_seed(2)
    query = blob_volume(data_gen, size, [(10, 12, 14, 4, 1.0), (22, 20, 18, 5, 0.7)], 0.05)
    reference = blob_volume(data_gen, size, [(11, 13, 13, 4, 1.0), (21, 21, 19, 5, 0.8)], 0.05)
    masks = torch.stack([sphere_mask(size, 11, 13, 13, 4), sphere_mask(size, 21, 21, 19, 5)])
    ref_masks = masks.reshape(1, NUM_CLASSES, size, size, size)
    assert all(ref_masks[0, k].sum() > 0 for k in range(NUM_CLASSES))
    memory_bank_idx = torch.tensor(MEMORY_BANK_IDX)

    with torch.no_grad():
        logits_full_pos = model(query, reference, ref_masks)
        shrink_positional_embeddings(model, size)
        query_features = model.encoder(query)
        task_tokens = model.encode_visual_prior(model.encode_image_feature(reference), ref_masks)
        logits = model(query, reference, ref_masks)
        logits_memory_bank = model(query, tgt_idx=memory_bank_idx)
    # Shrinking the positional embedding must not change the outputs.
    assert torch.equal(logits, logits_full_pos), "positional embedding shrink changed the logits"

    torch.save(model.state_dict(), os.path.join(args.out, "model.pt"),
               _use_new_zipfile_serialization=True)

    tensors = {}
    save_bin(args.out, "query_image", query, tensors)
    save_bin(args.out, "reference_image", reference, tensors)
    save_bin(args.out, "reference_masks", ref_masks, tensors)
    # The full-resolution stem output (x1, 1 MB) is left out: x2 depends on it.
    for stage, feature in enumerate(query_features[:4]):
        save_bin(args.out, f"query_features_{stage}", feature, tensors)
    for stage, tokens in enumerate(task_tokens):
        save_bin(args.out, f"task_tokens_{stage}", tokens, tensors)
    save_bin(args.out, "logits", logits, tensors)
    save_bin(args.out, "logits_memory_bank", logits_memory_bank, tensors)

    state_dict = model.state_dict()
    meta = {
        "generator": "tools/make_mass_fixtures.py",
        "torch_version": torch.__version__,
        "mass_commit": args.mass_commit or mass_commit(args.mass),
        "config": TINY_CONFIG,
        "input_size": [size, size, size],
        "num_classes": NUM_CLASSES,
        "memory_bank_idx": MEMORY_BANK_IDX,
        "positional_embedding_shape": list(model.task_embedding[0].pos_embed.embedding.shape),
        "randomised_constant_parameters": randomised,
        "tensors": tensors,
        "outputs": {
            "query_features_i": "model.encoder(query_image)[i], deepest first (x5, x4, x3, x2; "
                                "the stem output x1 is not saved)",
            "task_tokens_i": "model.encode_visual_prior(model.encode_image_feature(reference_image), "
                             "reference_masks)[i]; stage i has channels[4 - i]",
            "logits": "model(query_image, reference_image, reference_masks), before sigmoid",
            "logits_memory_bank": "model(query_image, tgt_idx=memory_bank_idx): task tokens "
                                  "task_prior_i[memory_bank_idx]",
        },
        "state_dict": [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                       for k, v in state_dict.items()],
        "tiny_param_count": sum(p.numel() for p in model.parameters()),
        "mass_preset": MASS_PRESET,
        "mass_param_count": mass_param_count,
        "mass_buffer_count": mass_buffer_count,
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        f.write(compact_json(meta) + "\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"tiny model: {meta['tiny_param_count']} parameters, {len(state_dict)} state-dict entries")
    print(f"wrote {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
