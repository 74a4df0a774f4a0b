"""Third-party plugins, installed with pip, are discovered through the entry point."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORRELATE = [sys.executable, "-m", "correlate"]
PACKAGES = {"correlate-example-plugin": HERE / "fixtures" / "example_plugin",
            "correlate-raising-plugin": HERE / "fixtures" / "raising_plugin",
            "correlate-broken-import-plugin": HERE / "fixtures" / "broken_import_plugin"}


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def third_party_plugins(tmp_path_factory):
    # Copies: building in place would leave build/ and egg-info in the source tree.
    for name, src in PACKAGES.items():
        dst = tmp_path_factory.mktemp(name)
        subprocess.run(["cp", "-r", f"{src}/.", str(dst)], check=True)
        pip("install", "--no-deps", "--no-build-isolation", str(dst))
    yield
    pip("uninstall", "-y", *PACKAGES)


def test_builtin_detectors_are_listed_as_plugins():
    out = subprocess.run(CORRELATE + ["plugins", "--json"], capture_output=True, text=True,
                         check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    for name, det in [("atime_minus_one", "atime-minus-one"), ("brick_unreachable", "brick-unreachable"),
                      ("auth_rejected", "auth-rejected"), ("rpc_unanswered", "rpc-unanswered"),
                      ("brick_not_responding", "brick-not-responding"), ("no_space", "no-space")]:
        assert rows[name]["hooks"] == ["correlate_detectors"]
        assert rows[name]["distribution"] == "correlate"
        assert rows[name]["detectors"] == [det]


def test_third_party_plugin_found_and_raising_plugin_does_not_stop_the_run(third_party_plugins):
    out = subprocess.run(CORRELATE + ["plugins", "--json"], capture_output=True, text=True,
                         check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["slow_replies"]["version"] == "1.2.0"
    assert rows["slow_replies"]["detectors"] == ["example-slow-replies"]
    assert "raising" in rows

    capture = HERE / "captures" / "healthy.pcap"
    res = subprocess.run(CORRELATE + ["analyze", "--json", str(capture)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CORRELATE_TRACE_HOOKS": "1"})
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    example = [f for f in lines if f.get("detector") == "example-slow-replies"]
    errors = [f for f in lines if f.get("kind") == "detector.error" and f["detector"] != "broken_import"]
    assert example and example[0]["layer"] == "finding" and example[0]["evidence"][0]["kind"] == "rpc.reply"
    assert len(errors) == 1 and errors[0]["detector"] == "raising"
    assert "correlate_detectors" in res.stderr   # the hook trace for plugin authors


def test_output_formats_from_the_outputs_hook(tmp_path):
    capture = HERE / "captures" / "atime-minus-one.pcap"
    html, trace = tmp_path / "r.html", tmp_path / "t.json"
    res = subprocess.run(CORRELATE + ["analyze", str(capture), "--output", f"html={html}",
                                      "--output", f"perfetto={trace}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "atime-minus-one" in html.read_text()
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" for e in events)
    bad = subprocess.run(CORRELATE + ["analyze", str(capture), "--output", "nosuch=x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "html" in bad.stderr and "Traceback" not in bad.stderr


def test_plugin_that_fails_to_import_is_named_and_skipped(third_party_plugins, tmp_path):
    """Its module imports a package that is not installed: every command still works, the
    plugin is named in one line, and `plugins` lists it as failed with the reason."""
    res = subprocess.run(CORRELATE + ["plugins", "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["broken_import"]["status"] == "failed"
    assert "correlate_dependency_that_is_not_installed" in rows["broken_import"]["error"]
    assert rows["atime_minus_one"]["status"] == "loaded"
    text = subprocess.run(CORRELATE + ["plugins"], capture_output=True, text=True, timeout=60)
    assert "broken_import" in text.stdout and "FAILED" in text.stdout

    capture = HERE / "captures" / "atime-minus-one.pcap"
    for args in (["analyze", "--json", str(capture)], ["timeline", "--json", str(capture)],
                 ["probes"]):
        res = subprocess.run(CORRELATE + args, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr
        named = [line for line in res.stderr.splitlines() if "broken_import" in line]
        assert len(named) == 1 and "skipped" in named[0], res.stderr
    # The other detectors still ran, and the report says one plugin did not.
    out = [json.loads(line) for line in
           subprocess.run(CORRELATE + ["analyze", "--json", str(capture)], capture_output=True,
                          text=True, timeout=120).stdout.splitlines()]
    assert any(f.get("detector") == "atime-minus-one" for f in out)
    assert any(f.get("kind") == "detector.error" and f["detector"] == "broken_import" for f in out)
