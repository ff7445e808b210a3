#!/usr/bin/env python3
"""A toy in which only the reference can say what to segment.

Usage:
  python3 tools/make_toy_regions.py OUT_DIR [--cases 10] [--regions 12]

Writes OUT_DIR/caseN.nii.gz (float32 image) and OUT_DIR/caseN_lab.nii.gz
(int16 labels), N = 0 .. cases-1, 40^3 voxels of 2 mm: a ball of radius 16
voxels cut into `regions` Voronoi cells around random seeds, each cell one
random intensity in [0.2, 1] plus noise (sd 0.05). Seeds and intensities
differ per case (seed = N), so a label value means nothing across cases:
a network trained on configs/train/toy_regions.yaml (tasks: regions, query
and reference the same case) can only segment a cell by reading the
reference. docs/log/demo_model_2026-12.md ("Does the network learn to read the reference?")
uses it. Needs numpy; writes NIfTI-1 with the standard library.
"""
import argparse
import gzip
import os
import struct

import numpy as np


def write_nifti(path, array, spacing):
    codes = {np.dtype("float32"): (16, 32), np.dtype("int16"): (4, 16)}
    datatype, bitpix = codes[array.dtype]
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *array.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, spacing, spacing, spacing, 1, 1, 1, 1)
    struct.pack_into("<ff", h, 108, 352.0, 1.0)  # vox_offset, scl_slope
    struct.pack_into("<h", h, 254, 1)  # sform_code: scanner
    for row in range(3):
        values = [0.0, 0.0, 0.0, 0.0]
        values[row] = spacing
        struct.pack_into("<4f", h, 280 + 16 * row, *values)
    h[344:348] = b"n+1\0"
    # array is [x, y, z]; NIfTI stores x fastest.
    payload = bytes(h) + b"\0" * 4 + np.ascontiguousarray(array.transpose(2, 1, 0)).tobytes()
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--regions", type=int, default=12)
    a = p.parse_args()
    if a.cases < 1 or a.regions < 2:
        p.error("--cases must be >= 1 and --regions >= 2")
    os.makedirs(a.out, exist_ok=True)
    n, radius = 40, 16
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).astype(np.float32)
    inside = ((grid - (n - 1) / 2) ** 2).sum(-1) <= radius**2
    for case in range(a.cases):
        rng = np.random.default_rng(case)
        seeds = rng.uniform(6, n - 6, (a.regions, 3))
        nearest = ((grid[..., None, :] - seeds) ** 2).sum(-1).argmin(-1) + 1
        labels = (nearest * inside).astype(np.int16)
        means = rng.uniform(0.2, 1.0, a.regions + 1)
        means[0] = 0.0
        image = (means[labels] + 0.05 * rng.standard_normal(labels.shape)).astype(np.float32)
        write_nifti(os.path.join(a.out, f"case{case}.nii.gz"), image, 2.0)
        write_nifti(os.path.join(a.out, f"case{case}_lab.nii.gz"), labels, 2.0)
    print(f"{a.cases} toy cases in {a.out}")


if __name__ == "__main__":
    main()
