#!/usr/bin/env python3
"""Make the PyPI `torch` wheel (a CUDA build) import and run on CPU without the ~3 GB of
nvidia-* CUDA wheels it depends on.

download.pytorch.org (the CPU-only wheels) is not reachable here; PyPI's Linux x86_64 torch
wheel links libtorch_cpu/libtorch_cuda/libtorch_python against libcudart, libcublas(Lt),
libcudnn, libcusparse(Lt), libcufft, libcupti, libcufile, libnccl and libnvshmem_host. On a
CPU those libraries are loaded but never called, except the CUDA runtime, which torch asks
for the device count (nvidia-cuda-runtime, 1 MB, is installed for real: without a driver it
answers "no device" and torch.cuda.is_available() is False).

This script writes, into torch/lib (on the libraries' $ORIGIN rpath), one small stub shared
library per missing dependency, with the right SONAME, the symbol versions that torch's
libraries require (from their .gnu.version_r), and every symbol they import from it. Each
stub function aborts with a clear message if it is ever called, so a CPU run can never
silently compute with a stub. Needs gcc and binutils (nm, readelf).

usage: torch_cpu_stubs.py SITE_PACKAGES_DIR [--check]
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Loaded only with dlopen when a CUDA feature is used (not DT_NEEDED of the core libraries).
SKIP_TORCH_LIBS = {"libcaffe2_nvrtc.so"}


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed(lib: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-dW", str(lib)]))


def verneed(lib: Path) -> dict[str, str]:
    """version name -> file (library) that must define it."""
    out = run(["readelf", "-VW", str(lib)])
    sec = out.split("Version needs section", 1)
    if len(sec) < 2:
        return {}
    res, cur = {}, None
    for line in sec[1].splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and cur:
            res[m.group(1)] = cur
    return res


def undefined(lib: Path) -> list[tuple[str, str | None]]:
    res = []
    for line in run(["nm", "-D", "--undefined-only", str(lib)]).splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "U":
            continue  # skip weak ('w') references: they may stay unresolved
        name = parts[1]
        ver = None
        if "@" in name:
            name, ver = name.split("@", 1)
            ver = ver.lstrip("@")
        res.append((name, ver))
    return res


def defined(lib: Path) -> set[str]:
    out = run(["nm", "-D", "--defined-only", str(lib)])
    return {line.split()[-1].split("@", 1)[0] for line in out.splitlines() if line.strip()}


def resolvable(name: str, search: list[Path], ldcache: str) -> Path | None:
    for d in search:
        p = d / name
        if p.exists():
            return p
    m = re.search(r"^\s*" + re.escape(name) + r" .*=> (\S+)$", ldcache, re.M)
    return Path(m.group(1)) if m else None


def main() -> int:
    site = Path(sys.argv[1]).resolve()
    check_only = "--check" in sys.argv
    tlib = site / "torch" / "lib"
    torch_libs = sorted(p for p in tlib.glob("*.so*") if p.name not in SKIP_TORCH_LIBS
                        and not is_stub(p))
    nv = site / "nvidia"
    search = [tlib] + sorted(nv.glob("*/lib"))
    ldcache = run(["/sbin/ldconfig", "-p"]) if Path("/sbin/ldconfig").exists() else ""

    missing: dict[str, set[tuple[str, str | None]]] = {}
    scanned: set[Path] = set()
    available_defs: set[str] = set()
    for lib in torch_libs:
        available_defs |= defined(lib)
    # Python's own symbols (libtorch_python imports them from the interpreter).
    py_syms: set[str] = set()
    for cand in [Path(sys.executable).resolve()] + list(Path(sys.base_prefix, "lib").glob("libpython3*.so*")):
        try:
            py_syms |= defined(cand)
        except subprocess.CalledProcessError:
            pass

    for lib in torch_libs:
        vn = verneed(lib)
        libs_needed = needed(lib)
        miss_here = []
        for n in libs_needed:
            p = resolvable(n, search, ldcache)
            if p is None or is_stub(p):
                miss_here.append(n)  # absent, or one of our stubs (regenerated)
            elif p not in scanned:
                scanned.add(p)
                available_defs |= defined(p)
        miss_here = sorted(set(miss_here))
        if not miss_here:
            continue
        unversioned_missing = [m for m in miss_here if m not in vn.values()]
        for m in miss_here:
            missing.setdefault(m, set())
        for name, ver in undefined(lib):
            if ver is not None:
                f = vn.get(ver)
                if f in miss_here:
                    missing[f].add((name, ver))
            else:
                if name in available_defs or name in py_syms:
                    continue
                for m in unversioned_missing:
                    missing[m].add((name, None))

    if check_only:
        for m, syms in sorted(missing.items()):
            print(f"{m}: {len(syms)} symbols")
        return 0

    cc = os.environ.get("CC", "gcc")
    with tempfile.TemporaryDirectory() as td:
        for soname, syms in sorted(missing.items()):
            versions = sorted({v for _, v in syms if v})
            names = sorted({n for n, _ in syms})
            src = Path(td, "stub.c")
            lines = [
                "#include <stdio.h>",
                "#include <stdlib.h>",
                f'const char bitnet_rs_torch_cpu_stub[] = "bitnet-rs torch CPU stub for {soname}";',
                "static void stub_called(const char *f) {",
                f'  fprintf(stderr, "FATAL: %s from {soname} was called, but this is a CPU-only torch '
                'install (scripts/torch_cpu_stubs.py replaced the CUDA libraries by stubs). '
                'Set BITNET_TORCH_FULL=1 in scripts/setup-python.sh for the real ones.\\n", f);',
                "  abort();",
                "}",
            ]
            for n in names:
                lines.append(f'void {n}(void) {{ stub_called("{n}"); }}')
            src.write_text("\n".join(lines) + "\n")
            vs = Path(td, "stub.map")
            if versions:
                body = []
                for i, v in enumerate(versions):
                    vsyms = sorted(n for n, vv in syms if vv == v)
                    glob = "".join(f" {n};" for n in vsyms)
                    extra = " bitnet_rs_torch_cpu_stub;" if i == 0 else ""
                    unv = "".join(f" {n};" for n, vv in sorted(syms) if vv is None) if i == 0 else ""
                    body.append(f"{v} {{ global:{glob}{extra}{unv} local: *; }};")
                vs.write_text("\n".join(body) + "\n")
            else:
                vs.write_text("{ global: *; };\n")
            out = tlib / soname
            tmp_out = Path(td, soname)
            subprocess.run([cc, "-shared", "-fPIC", "-O0", "-w", "-o", str(tmp_out), str(src),
                            f"-Wl,-soname,{soname}", f"-Wl,--version-script={vs}"], check=True)
            if out.exists() and not is_stub(out):
                print(f"refusing to overwrite real library {out}", file=sys.stderr)
                return 1
            os.replace(tmp_out, out)
            print(f"stub {soname}: {len(names)} symbols, versions {versions or '-'}")
    return 0


def is_stub(p: Path) -> bool:
    try:
        return p.stat().st_size < (4 << 20) and b"bitnet-rs torch CPU stub" in p.read_bytes()
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
