#!/usr/bin/env python3
"""Unpacks every FILE.xz in a folder to FILE (executable) and removes the .xz.

scripts/stage-cuda.sh and scripts/stage-cuda-ab.sh carry their binaries xz-packed to the lent GPU
machine (one call carries 64 MiB) and copy this beside them: that machine has Python (PyTorch)
but may have no xz.
"""
import lzma
import os
import shutil
import sys
from pathlib import Path

folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
for packed in sorted(folder.glob("*.xz")):
    out = packed.with_suffix("")
    with lzma.open(packed) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(out, 0o755)
    packed.unlink()
