#!/usr/bin/env python3
"""Writes the small torch.save fixtures under test/fixtures/pth/ and their expected.json.

Run with a Python that has torch (Debian's python3-torch 1.13 is enough):
    /usr/bin/python3 scripts/make-pth-fixtures.py

The files are tiny on purpose (a few KB each); the JS and native tests read them to check
that csrc/io/torch_zip.cpp finds every tensor's bytes exactly where torch.load does.

expected.json maps each file (state_dict.pth, mixed.pth and zip64.pth, which holds the same
tensors as mixed.pth) to {name: {dtype, shape, sum[, values]}}: names are '.'-joined for
nested dicts, in file order; sum is float64; values (tensors of <= 16 elements only) are
floats in row-major order of the tensor as indexed (a transposed view lists its logical
order, not its storage order), bool as 0/1. legacy.pth differs from run to run (the old
format keys storages by memory address); the other files are reproducible.
"""
import io
import json
import os
import struct
import zipfile
import zlib

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "pth")

# Our public dtype names (csrc/core/dtype.h, dtype_name).
DTYPE_NAMES = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 3)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 2, bias=False)])


def make_state_dict():
    torch.manual_seed(0)
    return Tiny().state_dict()  # an OrderedDict carrying _metadata, as torch.save writes it


def make_mixed():
    torch.manual_seed(1)
    tied = torch.randn(2, 2)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    strip = torch.arange(20, dtype=torch.float32) * 0.5
    return {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "f32": torch.randn(2, 3),
        "f64": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3) - 2,
        "i32": torch.tensor([-7, 8, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "bool": torch.tensor([True, False, True, True]),
        "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "tied_a": tied,
        "tied_b": tied,  # same storage under two keys
        "transposed": base.t(),  # non-contiguous view: shape (4, 3), strides (1, 4)
        "sliced": strip[5:11],  # storage offset 5 into a 20-element storage
        "param": torch.nn.Parameter(torch.randn(4)),
        "nested": {"inner": {"w": torch.randn(2, 2)}, "b": torch.tensor([9, 10], dtype=torch.int64)},
        "step": 7,
        "name": "hello",
        "list": [1, 2, 3],
    }


def flatten(obj, prefix=""):
    """The tensors a parser should report, with '.'-joined names, in insertion order."""
    for key, value in obj.items():
        name = prefix + key
        if isinstance(value, torch.Tensor):
            yield name, value.detach()
        elif isinstance(value, dict):
            yield from flatten(value, name + ".")


def describe(tensor):
    as_double = tensor.to(torch.float64)
    entry = {
        "dtype": DTYPE_NAMES[tensor.dtype],
        "shape": list(tensor.shape),
        "sum": float(as_double.sum()),
    }
    if tensor.numel() <= 16:
        entry["values"] = [float(v) for v in as_double.reshape(-1).tolist()]
    return entry


def save(obj, name, **kwargs):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kwargs)
    return path


def rewrite_entry(path, suffix, payload):
    """Replaces the zip entry ending in `suffix` by `payload`, keeping every other entry."""
    with zipfile.ZipFile(path) as zin:
        entries = [(info.filename, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for filename, data in entries:
            info = zipfile.ZipInfo(filename, date_time=(1980, 1, 1, 0, 0, 0))
            zout.writestr(info, payload if filename.endswith(suffix) else data)


def malicious_pickle():
    # Hand-written protocol-2 pickle for os.system('true'): what a hostile checkpoint does.
    # Never unpickle this with pickle.load; our parser must refuse it at the GLOBAL.
    command = b"true"
    return (b"\x80\x02" + b"cos\nsystem\n" + b"X" + struct.pack("<I", len(command)) + command
            + b"\x85" + b"R" + b".")


def write_zip64(path, entries):
    """Writes a ZIP_STORED archive that uses zip64 everywhere it can.

    Python's zipfile only puts zip64 fields in the central directory and end record when
    sizes really exceed 4 GiB, so this writes them by hand: every local header and central
    entry carries a zip64 extra field (sizes, and the offset in the central one) with
    0xFFFFFFFF in the 32-bit fields, and the end record is a zip64 record plus locator
    with the classic record saturated. Records are not aligned to 64 bytes as torch does.
    """
    out = io.BytesIO()
    central = []
    for name, data in entries:
        name_b = name.encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = out.tell()
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(name_b), len(local_extra)))
        out.write(name_b + local_extra + data)
        central_extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21,
                                   crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name_b),
                                   len(central_extra), 0, 0, 0, 0, 0xFFFFFFFF)
                       + name_b + central_extra)
    cd_offset = out.tell()
    for record in central:
        out.write(record)
    cd_size = out.tell() - cd_offset
    eocd64_offset = out.tell()
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries),
                          len(entries), cd_size, cd_offset))
    out.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                          0xFFFFFFFF, 0))
    with open(path, "wb") as f:
        f.write(out.getvalue())


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}

    state_dict = make_state_dict()
    save(state_dict, "state_dict.pth")
    expected["state_dict.pth"] = {n: describe(t) for n, t in flatten(state_dict)}

    mixed = make_mixed()
    mixed_path = save(mixed, "mixed.pth")
    expected["mixed.pth"] = {n: describe(t) for n, t in flatten(mixed)}

    # Same archive members as mixed.pth, re-packed with zip64 structures and no alignment.
    with zipfile.ZipFile(mixed_path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    write_zip64(os.path.join(OUT, "zip64.pth"), members)
    expected["zip64.pth"] = expected["mixed.pth"]
    reloaded = torch.load(os.path.join(OUT, "zip64.pth"))
    assert {n: describe(t) for n, t in flatten(reloaded)} == expected["zip64.pth"]

    # A genuine torch.save zip whose data.pkl was swapped for a pickle calling os.system.
    malicious_path = save({"w": torch.ones(2)}, "malicious.pth")
    rewrite_entry(malicious_path, "/data.pkl", malicious_pickle())

    # The pre-1.6 format (a bare pickle stream, no zip): the loader must refuse it clearly.
    save({"w": torch.ones(2)}, "legacy.pth", _use_new_zipfile_serialization=False)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
