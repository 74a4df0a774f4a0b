"""Which build of the hot path runs: the Cython-compiled modules or their plain Python source.

The build (setup.py) compiles the decoding modules from their own .py files and writes
_compiled.json beside them: each compiled module with the hash of the source it came from.
Python would import a compiled module ahead of its .py; the finder installed here imports the
.py instead when CORRELATE_NO_EXTENSIONS is set, or when the source has changed since the
build (an editable install after an edit), so the .py is always the truth.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

ENV_VAR = "CORRELATE_NO_EXTENSIONS"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _manifest() -> dict[str, str]:
    try:
        return json.loads((_PACKAGE_DIR / "_compiled.json").read_text())
    except (OSError, ValueError):
        return {}


def _source_of(name: str) -> Path:
    return _PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py")


def _hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class _SourceFinder:
    """Meta path finder: the .py of the modules that must run as plain Python."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        source = _source_of(name)
        return importlib.util.spec_from_file_location(name, source) if source.is_file() else None


def _unlisted_extensions(manifest: dict[str, str]) -> set[str]:
    """Extension files the manifest does not list: left by an older build that compiled
    more modules; their .py is newer."""
    names = set()
    for ext in importlib.machinery.EXTENSION_SUFFIXES:
        for path in _PACKAGE_DIR.rglob(f"*{ext}"):
            rel = path.relative_to(_PACKAGE_DIR).as_posix()[:-len(ext)]
            name = "correlate." + rel.replace("/", ".")
            if name not in manifest and path.with_name(path.name[:-len(ext)] + ".py").is_file():
                names.add(name)
    return names


def _plain_modules(manifest: dict[str, str]) -> tuple[set[str], str | None]:
    """The compiled modules to import from source instead, and why (None: none)."""
    stale = _unlisted_extensions(manifest)
    if os.environ.get(ENV_VAR):
        return set(manifest) | stale, f"{ENV_VAR} is set"
    changed = {name for name, digest in manifest.items() if _hash(_source_of(name)) != digest}
    return changed | stale, "source changed since the build" if changed else None


_MANIFEST = _manifest()
_PLAIN, _WHY_PLAIN = _plain_modules(_MANIFEST)
if _PLAIN:
    sys.meta_path.insert(0, _SourceFinder(_PLAIN))


def describe() -> str:
    """One line for `correlate --version`: which hot path runs, and why."""
    if not _MANIFEST:
        return "hot path: pure Python (built without Cython or a C compiler)"
    compiled = []
    for name in _MANIFEST:
        module = importlib.import_module(name)
        if isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader):
            compiled.append(name)
    if len(compiled) == len(_MANIFEST):
        return f"hot path: compiled (Cython, {len(compiled)} modules)"
    if not compiled:
        return f"hot path: pure Python ({_WHY_PLAIN or 'compiled modules not found'})"
    return (f"hot path: compiled for {len(compiled)} of {len(_MANIFEST)} modules, "
            f"pure Python for the rest ({_WHY_PLAIN or 'compiled modules not found'})")
