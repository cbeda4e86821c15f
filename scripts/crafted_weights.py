#!/usr/bin/env python3
"""Development-time crafted legacy `.pth` files for the reliability tests (tests/fixtures/crafted/).

Each is a well-formed legacy PyTorch checkpoint (the pickle sequence torch < 1.6 writes) of one
float tensor `w`, with one number set to what an attacker would choose:

- negoffset.pth: storage offset -1;
- hugecount.pth: the storage claims 2^62 - 1 elements;
- hugestride.pth: a stride of 2^62 (wraps around to a small offset in unchecked arithmetic);
- stride0.pth: a 2^40-element tensor with stride 0 over a one-element storage.

Needs only the standard library (no torch). Run from the repository root:

    python3 scripts/crafted_weights.py
"""
import collections
import io
import pickle
import struct

OUT = "tests/fixtures/crafted"
MAGIC = 0x1950A86A20F9469CFC6C


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (REBUILD, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FLOAT_STORAGE, obj.key, "cpu", obj.numel, None)
        return None


REBUILD = None
FLOAT_STORAGE = None


def write(path, offset, size, stride, numel, count):
    global REBUILD, FLOAT_STORAGE
    import sys
    import types
    # Make `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` picklable by reference
    # without torch: fake modules in sys.modules.
    torch = sys.modules.setdefault("torch", types.ModuleType("torch"))
    utils = sys.modules.setdefault("torch._utils", types.ModuleType("torch._utils"))

    def _rebuild_tensor_v2(*a):
        return a

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    FloatStorage = type("FloatStorage", (), {})
    FloatStorage.__module__ = "torch"
    torch.FloatStorage = FloatStorage
    REBUILD, FLOAT_STORAGE = _rebuild_tensor_v2, FloatStorage

    buf = io.BytesIO()
    for obj in [MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                               "type_sizes": {"short": 2, "int": 4, "long": 4}}]:
        pickle.dump(obj, buf, protocol=2)
    st = Storage("0", numel)
    Pickler(buf, protocol=2).dump(collections.OrderedDict([("w", Tensor(st, offset, size, stride))]))
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<Q", count))
    buf.write(struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
    with open(f"{OUT}/{path}", "wb") as f:
        f.write(buf.getvalue())
    print(path, len(buf.getvalue()), "bytes")


def main():
    write("negoffset.pth", -1, [2], [1], 4, 4)
    write("hugecount.pth", 0, [2], [1], 4, 2**62 - 1)
    write("hugestride.pth", 0, [2], [2**62], 4, 4)
    write("stride0.pth", 0, [2**40], [0], 4, 4)
    write("valid.pth", 1, [3], [1], 4, 4)


if __name__ == "__main__":
    main()
