"""A wheel built from a fresh clone installs plugins/ and probes/ under the correlate
namespace only, with the probe programs, and its entry points load the built-in detectors.
With a C compiler it carries the compiled hot path and runs it; without one it still builds,
as plain Python."""
import json
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
    (wheel,) = wheels.glob("gluster_correlate-*.whl")
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
    top = {n.split("/")[0] for n in names if not n.startswith("gluster_correlate-")}
    assert top == {"correlate"}            # no top-level plugins or probes package
    assert "correlate/plugins/atime_minus_one.py" in names
    # every package of the source tree (a new stage folder must not be left out)
    source = Path(__file__).resolve().parent.parent / "correlate"
    packages = {f"correlate/{p.parent.name}/__init__.py" for p in source.glob("*/__init__.py")}
    assert packages <= set(names), packages - set(names)
    assert "correlate/probes/uprobe_events.c" in names
    assert {"correlate/outputs/report.css", "correlate/outputs/report.js", "correlate/outputs/charts.js",
            "correlate/outputs/vendor/uPlot.iife.min.js", "correlate/outputs/vendor/uPlot.min.css",
            "correlate/outputs/vendor/uPlot.LICENSE"} <= set(names)
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
from correlate.cli import main
from correlate.cli.engine import analyze    # each command imports from where it is installed
from correlate.outputs import html      # reads its style and script, package data
assert "function" in html._JS and ":root" in html._CSS and "uPlot" in html._JS
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ids, has_probe = out.stdout.splitlines()
    assert all(d in ids for d in ("atime-minus-one", "brick-unreachable", "auth-rejected",
                                  "rpc-unanswered"))
    assert has_probe == "True"


def test_third_party_plugin_in_a_clean_environment(tmp_path):
    """A plugin package that depends on "gluster-correlate", installed with pip into a fresh
    virtual environment next to correlate's own wheel, gets correlate (not the unrelated
    "correlate" of the package index) and is found by `correlate plugins`."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot make a fresh clone")
    plugin, venv = tmp_path / "plugin", tmp_path / "venv"
    wheels = build_wheel(tmp_path, {"CC": "false"}).parent      # plain Python is enough here
    shutil.copytree(ROOT / "tests" / "fixtures" / "example_plugin", plugin)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(plugin), "-w",
                    str(wheels)], check=True, timeout=300, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--find-links", str(wheels), "correlate-example-plugin"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0 and ("No matching distribution" in pip.stderr
                                and "gluster-correlate" not in pip.stderr):
        pytest.skip(f"the package index is not reachable for correlate's dependencies: {pip.stderr[-300:]}")
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True,
                            text=True, check=True, timeout=120).stdout
    dists = {d["name"].lower(): d["version"] for d in json.loads(listed)}
    assert dists.get("gluster-correlate") == "0.1.0" and "correlate" not in dists
    out = subprocess.run([str(venv / "bin" / "correlate"), "plugins", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["slow_replies"]["distribution"] == "correlate-example-plugin"
    assert rows["slow_replies"]["detectors"] == ["example-slow-replies"]
    assert rows["atime_minus_one"]["distribution"] == "gluster-correlate"
