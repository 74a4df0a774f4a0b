"""The optional compiled hot path: Cython compiles the decoding modules from their own .py
source (with the .pxd files beside them adding C types) when Cython and a C compiler are
there; without either, or with CORRELATE_NO_EXTENSIONS=1, the package is plain Python.
Everything else about the package is in pyproject.toml."""
import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

# What is compiled, and why: only the per-packet core, the code that runs for every packet
# or every RPC record (capture records, link/IP/TCP headers, reassembly, record marking, RPC
# headers and the call/reply matching, XDR and the loop that reads Gluster structs). Everything
# else runs once per event or less and gains little from compiling, while each module adds
# 15-30 s of C compiling to a source build; leaving them out keeps `pip install` from source
# well under a minute. Binary wheels (pyproject.toml [tool.cibuildwheel]) skip compiling.
HOT_MODULES = [
    "correlate/xdr.py",
    "correlate/wire/capture.py",
    "correlate/wire/packet.py",
    "correlate/wire/tcp.py",
    "correlate/wire/record_marking.py",
    "correlate/wire/rpc_header.py",
    "correlate/wire/rpc.py",
    "correlate/gluster/layout_read.py",
]
REQUIRED = bool(os.environ.get("CORRELATE_REQUIRE_EXTENSIONS"))   # binary wheels: no fallback
MANIFEST = "_compiled.json"      # module -> sha256 of the source it was compiled from


def _module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def _source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OptionalBuildExt(build_ext):
    """build_ext that treats a failed compile as "stay plain Python" rather than an error,
    and writes the manifest the runtime checks a compiled module against its source with."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self):
        self.built = []
        self._remove_stale()
        try:
            super().run()
        except Exception as exc:     # no compiler at all: distutils raises from run()
            if REQUIRED:
                raise
            self._say(f"not compiling the hot path ({exc}); plain Python it is")
        self._write_manifest()

    def build_extension(self, ext):
        self._say(f"compiling {ext.name} (the per-packet core; see HOT_MODULES)")
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRED:
                raise
            self._say(f"could not compile {ext.name} ({exc}); it stays plain Python")
            return
        self.built.append(ext.name)

    def _remove_stale(self):
        """An editable install keeps extensions beside the source: one left from a build that
        compiled more modules would be imported instead of its .py (hotpath.py ignores it
        too; this keeps the tree clean)."""
        wanted = {_module_name(p) for p in HOT_MODULES}
        for so in (HERE / "correlate").rglob("*.so"):
            rel = so.relative_to(HERE).as_posix()
            if rel.split(".", 1)[0].replace("/", ".") not in wanted:
                so.unlink()
                self._say(f"removed {rel}: that module is no longer compiled")

    def _write_manifest(self):
        target = Path(self.get_ext_fullpath("correlate.xdr")).parent / MANIFEST
        target.parent.mkdir(parents=True, exist_ok=True)
        sources = {_module_name(p): _source_hash(HERE / p) for p in HOT_MODULES}
        target.write_text(json.dumps({m: sources[m] for m in sorted(self.built)}, indent=1) + "\n")

    def _say(self, text):
        print(f"correlate: {text}", file=sys.stderr)


def extensions():
    if os.environ.get("CORRELATE_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRED:
            raise
        print("correlate: Cython is not installed; the hot path stays plain Python", file=sys.stderr)
        return []
    modules = cythonize(
        HOT_MODULES,
        build_dir="build/cython",          # the generated C stays out of the source tree
        quiet=True,
        compiler_directives={
            "language_level": 3,
            # Annotations document; they must not change what a function accepts. C types
            # come only from the .pxd files.
            "annotation_typing": False,
            # Hostile captures: index checks and negative indices stay as in Python.
            "boundscheck": True,
            "wraparound": True,
        },
    )
    for module in modules:
        module.extra_compile_args.append("-g0")     # no debug info: quicker to compile, smaller
    return modules


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
