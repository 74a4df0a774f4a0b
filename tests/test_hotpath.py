"""The compiled hot path is the plain Python source, compiled: both decode every committed
capture, and a corpus of damaged copies of them, into the same events and diagnostics.

The damaged copies are derived deterministically from the committed captures (truncations,
bit flips, replayed chunks, splices of two captures), so a difference found once is found
again. Each build runs in its own process: CORRELATE_NO_EXTENSIONS=1 picks the plain one.
"""
import importlib.machinery
import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from correlate import hotpath

CAPTURES = Path(__file__).parent / "captures"

# Decodes each file named on the command line and prints, per file, the events and the
# diagnostics as one JSON line; the first line says which hot path ran.
DECODE_ALL = r"""
import json, sys
from correlate import hotpath
from correlate.diagnostics import Diagnostics
from correlate.wire.decode import decode_capture
print(hotpath.describe())
for path in sys.argv[1:]:
    for details in (True, False):
        diag = Diagnostics(path)
        try:
            events = list(decode_capture(path, diag=diag, details=details))
            error = None
        except Exception as exc:
            events, error = [], f"{type(exc).__name__}: {exc}"
        print(json.dumps({"file": path, "details": details, "events": events, "error": error,
                          "skipped": sorted(diag.counts.items()),
                          "first_where": sorted(diag.first_where.items()), "fatal": diag.fatal},
                         sort_keys=True, default=repr))
"""


def mutations(name: str, data: bytes, other: bytes) -> dict[str, bytes]:
    """Damaged copies of one capture, the same every run (seeded by the capture's name)."""
    rng = random.Random(zlib.crc32(name.encode()))
    out = {}
    for i in range(3):                                  # the capture ends early
        cut = rng.randrange(1, len(data))
        out[f"truncated{i}"] = data[:cut]
    out["truncated-header"] = data[:10]
    for i in range(4):                                  # bits flipped past the file header
        b = bytearray(data)
        for _ in range(4 << i):
            pos = rng.randrange(24, len(b))
            b[pos] ^= 1 << rng.randrange(8)
        out[f"flipped{i}"] = bytes(b)
    b = bytearray(data)                                 # the file header itself damaged
    b[rng.randrange(0, 24)] ^= 1 << rng.randrange(8)
    out["flipped-header"] = bytes(b)
    for i in range(2):                                  # a chunk replayed: repeats, overlaps
        a = rng.randrange(24, len(data) - 1)
        n = rng.randrange(1, min(4096, len(data) - a) + 1)
        out[f"replayed{i}"] = data[:a + n] + data[a:]
    for i in range(2):                                  # this capture's start, another's end
        out[f"spliced{i}"] = data[:rng.randrange(24, len(data))] + other[rng.randrange(24, len(other)):]
    return out


def corpus(tmp: Path) -> list[Path]:
    originals = sorted(CAPTURES.glob("*.pcap*"))
    assert originals, f"no captures in {CAPTURES}"
    files = list(originals)
    for n, path in enumerate(originals):
        other = originals[(n + 1) % len(originals)].read_bytes()
        for kind, data in mutations(path.name, path.read_bytes(), other).items():
            target = tmp / f"{path.stem}-{kind}.pcap"
            target.write_bytes(data)
            files.append(target)
    if shutil.which("editcap"):                         # the pcapng reader too
        for path in originals[:3]:
            ng = tmp / f"{path.stem}.pcapng"
            subprocess.run(["editcap", "-F", "pcapng", str(path), str(ng)], check=True, timeout=60)
            files.append(ng)
            data = ng.read_bytes()
            for kind, damaged in mutations(ng.name, data, data).items():
                target = tmp / f"{path.stem}-{kind}.pcapng"
                target.write_bytes(damaged)
                files.append(target)
    return files


def decode_all(files: list[Path], plain: bool) -> list[str]:
    env = dict(os.environ)
    env.pop(hotpath.ENV_VAR, None)
    if plain:
        env[hotpath.ENV_VAR] = "1"
    proc = subprocess.run([sys.executable, "-c", DECODE_ALL, *map(str, files)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_compiled_and_plain_decode_alike(tmp_path):
    if not hotpath._MANIFEST:
        pytest.skip("the hot path was not compiled (no Cython or C compiler at install time)")
    files = corpus(tmp_path)
    compiled, plain = decode_all(files, plain=False), decode_all(files, plain=True)
    assert compiled[0].startswith("hot path: compiled"), compiled[0]
    assert plain[0].startswith("hot path: pure Python"), plain[0]
    assert len(compiled) == len(plain) == 1 + 2 * len(files)
    for c, p in zip(compiled[1:], plain[1:]):
        if c != p:
            c, p = json.loads(c), json.loads(p)
            diff = [k for k in c if c[k] != p[k]]
            pytest.fail(f"{c['file']} (details={c['details']}) decodes differently in {diff}")
    # the corpus is not all noise: real events, and damage the decoders had to skip
    decoded = [json.loads(line) for line in compiled[1:]]
    assert sum(len(d["events"]) for d in decoded) > 1000
    assert sum(1 for d in decoded if d["skipped"]) > len(files) // 4


def test_a_source_changed_since_the_build_runs_as_plain_python(monkeypatch):
    """An editable install whose .py was edited after the build must run the edit."""
    monkeypatch.delenv(hotpath.ENV_VAR, raising=False)
    source = Path(hotpath.__file__).parent / "xdr.py"
    built_from = {name: hotpath._hash(hotpath._source_of(name)) for name in hotpath._MANIFEST}
    built_from["correlate.xdr"] = hotpath._hash(source)          # as if built from today's sources
    assert hotpath._plain_modules(built_from) == (set(), None)
    edited = dict(built_from, **{"correlate.xdr": "0" * 64})
    assert hotpath._plain_modules(edited) == ({"correlate.xdr"}, "source changed since the build")
    monkeypatch.setenv(hotpath.ENV_VAR, "1")
    assert hotpath._plain_modules(built_from)[0] == set(built_from)


def test_an_extension_left_by_an_older_build_is_not_imported(monkeypatch, tmp_path):
    """A module compiled by an earlier build but no longer (not in the manifest) runs its .py."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / "wire").mkdir()
    for name in ("old", "kept"):
        (tmp_path / "wire" / f"{name}.py").write_text("")
        (tmp_path / "wire" / f"{name}{suffix}").write_bytes(b"")
    monkeypatch.setattr(hotpath, "_PACKAGE_DIR", tmp_path)
    assert hotpath._unlisted_extensions({"correlate.wire.kept": "x"}) == {"correlate.wire.old"}


@pytest.mark.parametrize("plain", [False, True])
def test_version_says_which_hot_path_runs(plain):
    env = dict(os.environ)
    env.pop(hotpath.ENV_VAR, None)
    if plain:
        env[hotpath.ENV_VAR] = "1"
    out = subprocess.run([sys.executable, "-m", "correlate", "--version"], env=env,
                         capture_output=True, text=True, timeout=60).stdout
    version, path = out.splitlines()
    assert version == "correlate, version 0.1.0"
    if not hotpath._MANIFEST:
        assert path == "hot path: pure Python (built without Cython or a C compiler)"
    elif plain:
        assert path == f"hot path: pure Python ({hotpath.ENV_VAR} is set)"
    else:
        assert path == f"hot path: compiled (Cython, {len(hotpath._MANIFEST)} modules)"


def _pxd_attributes(pxd: Path) -> dict[str, set[str]]:
    """cdef class name -> the attributes its .pxd declares."""
    classes, current = {}, None
    for line in pxd.read_text().splitlines():
        words = line.split("#")[0].replace(",", " ").split()
        if words[:2] == ["cdef", "class"]:
            name, _, base = words[2].rstrip(":").partition("(")
            current = classes.setdefault(name, set())
            current.update(classes.get(base.rstrip(")"), ()))    # a subclass has its base's
        elif current is not None and line.startswith("    cdef ") and "(" not in line:
            names = words[1:]
            names = names[1:] if names[0] in ("public", "readonly") else names
            current.update(names[1:])                   # after the type
    return classes


def _assigned_attributes(source: Path) -> dict[str, set[str]]:
    """class name -> every `self.x = ...` (and augmented or tuple) target in its methods."""
    import ast
    out = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef):
            names = out.setdefault(node.name, set())
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) \
                        and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    names.add(sub.attr)
    return out


@pytest.mark.parametrize("pxd", sorted(Path(hotpath.__file__).parent.rglob("*.pxd")),
                         ids=lambda p: p.name)
def test_pxd_declares_every_attribute_its_classes_set(pxd):
    """A compiled class has only the attributes its .pxd declares: one added to the .py alone
    would fail only in the compiled build, so say it here, in every build."""
    assigned = _assigned_attributes(pxd.with_suffix(".py"))
    for cls, declared in _pxd_attributes(pxd).items():
        missing = assigned.get(cls, set()) - declared
        assert not missing, f"{pxd.name}: declare {sorted(missing)} in cdef class {cls}"
