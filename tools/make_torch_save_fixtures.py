#!/usr/bin/env python3
"""Writes the small torch.save files that tests/common/torch_checkpoint_test.cpp reads.

Usage: python3 tools/make_torch_save_fixtures.py [--out tests/fixtures/torch_save]

Files written:
  bare_state_dict.pt     model.state_dict() of a small module, several dtypes, plus a
                         transposed (non-contiguous) view and two views sharing one storage
  wrapped_checkpoint.pt  {"epoch": 3, "optimizer": opt.state_dict(), "model": sd, ...}
  protocol4_state_dict.pt  the bare state dict pickled with protocol 4 (torch.save's default is 2)
  ddp_prefixed.pt        the same state dict with every key prefixed "module."
  malicious.pt           a torch.save-shaped zip whose data.pkl calls os.system: must be refused
  expected.bin           every tensor of bare_state_dict.pt, in file order, converted to
                         float64 little-endian and flattened in logical (row-major) order
  expected.txt           one line per tensor of expected.bin, in order: "key dtype shape"
                         (shape as 2x1x3x3x3, or "scalar")

The values are deterministic (torch.manual_seed(0)), so rerunning rewrites the same
files for the same torch version.
"""
import argparse
import collections
import copy
import os
import struct
import zipfile

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.linear = nn.Linear(4, 3)
        self.register_buffer("steps", torch.tensor([7, -2, 123456789012], dtype=torch.int64))
        self.register_buffer("counts", torch.tensor([[1, 2], [3, -4]], dtype=torch.int32))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("bytes_u8", torch.tensor([0, 1, 255], dtype=torch.uint8))
        self.register_buffer("bytes_i8", torch.tensor([-128, 5, 127], dtype=torch.int8))
        self.register_buffer("shorts", torch.tensor([-300, 300], dtype=torch.int16))
        self.register_buffer("halfs", torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16))
        self.register_buffer("bhalfs", torch.tensor([0.5, -2.0], dtype=torch.bfloat16))
        self.register_buffer("doubles", torch.tensor([1.0 / 3.0, -2.5], dtype=torch.float64))
        self.register_buffer("scalar", torch.tensor(2.75))


def make_state_dict():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        # Non-constant LayerNorm parameters so that a wrong offset shows up.
        net.norm.weight.copy_(torch.randn(4))
        net.norm.bias.copy_(torch.randn(4))
    sd = net.state_dict()
    # A non-contiguous view and two views of one storage with offsets: torch.save
    # keeps the storage once and records (offset, size, stride) per tensor.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8.0
    sd["transposed"] = base.t()  # stride (1, 6)
    sd["shared_row1"] = base[1]  # offset 6
    sd["shared_block"] = base[1:3, 2:5]  # offset 8, stride (6, 1)
    return net, sd


def write_expected(sd, out_dir):
    blobs = []
    lines = []
    for key, tensor in sd.items():
        shape = "x".join(str(n) for n in tensor.shape) or "scalar"
        lines.append(f"{key} {str(tensor.dtype).replace('torch.', '')} {shape}")
        blobs.append(tensor.detach().to(torch.float64).contiguous().reshape(-1).numpy()
                     .astype("<f8").tobytes())
    with open(os.path.join(out_dir, "expected.bin"), "wb") as f:
        f.write(b"".join(blobs))
    with open(os.path.join(out_dir, "expected.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_malicious(path):
    # Written by hand so that the global is literally os.system on every platform
    # (pickling os.system itself would name posix.system on Linux). Python's
    # pickle.load of this data.pkl would run `echo`; the C++ reader must refuse it.
    def unicode(text):
        data = text.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    payload = (b"\x80\x02}" + unicode("weight") + b"cos\nsystem\n" +
               unicode("echo iris-test-should-never-run") + b"\x85Rs.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in (("malicious/data.pkl", payload), ("malicious/version", b"3\n")):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures/torch_save")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    net, sd = make_state_dict()
    torch.save(sd, os.path.join(args.out, "bare_state_dict.pt"), _use_new_zipfile_serialization=True)
    write_expected(sd, args.out)

    # A stepped optimizer on a copy of the net: its state_dict holds tensors, ints,
    # floats, bools, lists and nested dicts, and `sd` keeps the values in expected.bin.
    trained = copy.deepcopy(net)
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    loss = trained.linear(trained.norm(torch.ones(2, 4))).sum() + trained.conv(torch.ones(1, 1, 2, 2, 2)).sum()
    loss.backward()
    opt.step()
    wrapped = collections.OrderedDict()
    wrapped["epoch"] = 3
    wrapped["optimizer"] = opt.state_dict()
    wrapped["best_dice"] = 0.875
    wrapped["note"] = "iris fixture"
    wrapped["history"] = [1, -70000, 2 ** 40, 2.5, None, True, False, (4, "x"), {"a": 1}]
    wrapped["model"] = sd
    torch.save(wrapped, os.path.join(args.out, "wrapped_checkpoint.pt"),
               _use_new_zipfile_serialization=True)

    # Protocol 4 uses other opcodes (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL).
    torch.save(sd, os.path.join(args.out, "protocol4_state_dict.pt"), pickle_protocol=4,
               _use_new_zipfile_serialization=True)

    ddp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    torch.save(ddp, os.path.join(args.out, "ddp_prefixed.pt"), _use_new_zipfile_serialization=True)

    write_malicious(os.path.join(args.out, "malicious.pt"))
    print("torch", torch.__version__, "->", args.out)


if __name__ == "__main__":
    main()
