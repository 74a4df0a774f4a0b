"""A wheel built from a fresh clone installs plugins/ and probes/ under the correlate
namespace only, with the probe programs, and its entry points load the built-in detectors.
With a C compiler it carries the compiled hot path and runs it; without one it still builds,
as plain Python."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path, env=None) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot make a fresh clone")
    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler (the Makefile installs gcc)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(clone), "-w",
                    str(wheels)], check=True, timeout=1200, capture_output=True,
                   env={**os.environ, **(env or {})})
    (wheel,) = wheels.glob("correlate-*.whl")
    return wheel


def hot_path_of(wheel, tmp_path) -> str:
    """What `correlate --version` says about the hot path once the wheel is installed."""
    tmp_path.mkdir(exist_ok=True)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "CORRELATE_NO_EXTENSIONS"}
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                          "from correlate.cli import main; main()", "--version"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[1]


def test_wheel_without_a_c_compiler_is_plain_python(tmp_path):
    wheel = build_wheel(tmp_path, {"CC": "false"})       # every compile fails
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    assert hot_path_of(wheel, tmp_path) == "hot path: pure Python (built without Cython or a C compiler)"


def test_wheel_from_a_fresh_clone(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("correlate-")}
    assert top == {"correlate"}            # no top-level plugins or probes package
    assert "correlate/plugins/atime_minus_one.py" in names
    assert "correlate/probes/uprobe_events.c" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    check = f"""
import sys; sys.path.insert(0, {str(target)!r})
import importlib.resources, correlate
assert correlate.__file__.startswith({str(target)!r}), correlate.__file__
from correlate.plugin_manager import get_plugin_manager
from correlate.detector import load_detectors
detectors, errors = load_detectors(get_plugin_manager(), {{}})
assert not errors
print(sorted(d.id for d in detectors))
print(importlib.resources.files("correlate.probes").joinpath("uprobe_events.c").is_file())
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ids, has_probe = out.stdout.splitlines()
    assert all(d in ids for d in ("atime-minus-one", "brick-unreachable", "auth-rejected",
                                  "rpc-unanswered"))
    assert has_probe == "True"
    compiled = [n for n in names if n.endswith(".so")]
    assert "correlate/wire/tcp.py" in names and any(n.startswith("correlate/wire/tcp.") for n in compiled)
    assert hot_path_of(wheel, tmp_path / "again").startswith("hot path: compiled (Cython, ")
