#!/usr/bin/env python3
"""Copy a GGUF file under another `general.architecture` (standard library only).

    scripts/gguf_set_arch.py IN.gguf OUT.gguf bitnet

Renames `general.architecture` and every `<old arch>.*` key to the new prefix; the tensor table
and the tensor data are copied byte for byte. scripts/bench-serve.sh uses it to give the default
model (bitnet.cpp's `bitnet-b1.58` architecture, which mainline llama.cpp does not know) the
`bitnet` architecture that llama.cpp, ik_llama.cpp and bitnet-rs all load. The two differ only
in the FFN activation (squared ReLU vs SiLU), which costs the same: the relabelled model computes
a different function at the same speed, which is all a speed benchmark needs.
"""

import struct
import sys

# GGUF metadata value types -> fixed sizes (strings and arrays handled apart)
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MAX_ITEMS = 1 << 32


class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def take(self, n):
        if n < 0 or self.p + n > len(self.d):
            raise ValueError("truncated GGUF")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        n = self.u64()
        return self.take(n).decode("utf-8")

    def skip_value(self, ty):
        if ty in FIXED:
            self.take(FIXED[ty])
        elif ty == STRING:
            self.take(self.u64())
        elif ty == ARRAY:
            ity = self.u32()
            n = self.u64()
            if n > MAX_ITEMS:
                raise ValueError("absurd array length")
            if ity in FIXED:
                self.take(FIXED[ity] * n)
            else:
                for _ in range(n):
                    self.skip_value(ity)
        else:
            raise ValueError(f"unknown GGUF value type {ty}")


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, new_arch = argv
    with open(src, "rb") as f:
        data = f.read()
    r = Reader(data)
    if r.take(4) != b"GGUF":
        raise SystemExit(f"{src}: not a GGUF file")
    version = r.u32()
    if version not in (2, 3):
        raise SystemExit(f"{src}: GGUF version {version} not supported")
    n_tensors, n_kv = r.u64(), r.u64()
    kvs = []
    old_arch = None
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        ty = r.u32()
        start = r.p
        if key == "general.architecture" and ty == STRING:
            old_arch = r.string()
        elif key == "general.alignment" and ty == 4:
            alignment = r.u32()
        else:
            r.skip_value(ty)
        kvs.append((key, ty, data[start:r.p]))
    if old_arch is None:
        raise SystemExit(f"{src}: no general.architecture")
    tensors_start = r.p
    for _ in range(n_tensors):
        r.string()
        n_dims = r.u32()
        r.take(8 * n_dims + 4 + 8)
    tensors_end = r.p
    data_start = (tensors_end + alignment - 1) // alignment * alignment

    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv))
    renamed = 0
    for key, ty, raw in kvs:
        if key == "general.architecture":
            raw = gguf_string(new_arch)
        elif key.startswith(old_arch + "."):
            key = new_arch + key[len(old_arch):]
            renamed += 1
        out += gguf_string(key) + struct.pack("<I", ty) + raw
    out += data[tensors_start:tensors_end]
    out += b"\0" * ((-len(out)) % alignment)
    with open(dst, "wb") as f:
        f.write(out)
        f.write(memoryview(data)[data_start:])
    print(f"{dst}: architecture {old_arch} -> {new_arch} ({renamed} keys renamed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
