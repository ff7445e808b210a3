#!/usr/bin/env python3
"""An independent reader of the files iris writes (model, task, checkpoint).

Written from the safetensors layout alone -- an 8-byte little-endian header
length, a JSON header, raw little-endian tensor bytes -- and the iris
checksum rule stated in include/iris/common/tensor_file.h, with nothing but
the Python standard library. It checks that the tensors tile the data
section, recomputes the CRC-32 with zlib, and prints one JSON object:
{"format": ..., "checksum_ok": bool, "metadata": {...},
 "tensors": {name: {"dtype", "shape", "sum"}}}.
"""
import array
import json
import struct
import sys
import zlib

ITEM = {"F64": ("d", 8), "F32": ("f", 4), "I64": ("q", 8), "I32": ("i", 4), "I16": ("h", 2),
        "I8": ("b", 1), "U8": ("B", 1), "BOOL": ("B", 1)}


def main(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {})
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    position = 0
    for begin, end, name in spans:
        assert begin == position, f"{name}: hole or overlap at {begin}"
        position = end
    assert position == len(data), "tensor bytes do not fill the data section"
    canonical = b""
    for key in sorted(metadata):
        if key != "iris.checksum":
            canonical += key.encode() + b"\0" + metadata[key].encode() + b"\0"
    for name in sorted(header):
        v = header[name]
        canonical += name.encode() + b"\0" + v["dtype"].encode() + b"\0"
        canonical += ",".join(str(d) for d in v["shape"]).encode() + b"\0"
        canonical += f"{v['data_offsets'][0]},{v['data_offsets'][1]}".encode() + b"\0"
    crc = zlib.crc32(data, zlib.crc32(canonical)) & 0xFFFFFFFF
    tensors = {}
    for name, v in header.items():
        code, size = ITEM[v["dtype"]]
        begin, end = v["data_offsets"]
        values = array.array(code)
        values.frombytes(data[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        count = 1
        for d in v["shape"]:
            count *= d
        assert len(values) == count, f"{name}: {len(values)} values for shape {v['shape']}"
        tensors[name] = {"dtype": v["dtype"], "shape": v["shape"], "sum": float(sum(values))}
    print(json.dumps({"format": metadata.get("format"),
                      "checksum_ok": metadata.get("iris.checksum") == f"crc32:{crc:08x}",
                      "metadata": metadata, "tensors": tensors}))


if __name__ == "__main__":
    main(sys.argv[1])
