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
                      ("brick_not_responding", "brick-not-responding"), ("no_space", "no-space"),
                      ("slow_brick", "slow-brick"), ("lock_wait", "lock-wait")]:
        assert rows[name]["hooks"] == ["correlate_detectors"]
        assert rows[name]["distribution"] == "gluster-correlate"
        assert rows[name]["detectors"] == [det]
    app = rows["app_latency"]      # a detector and the probe group it needs
    assert sorted(app["hooks"]) == ["correlate_detectors", "correlate_probe_specs"]
    assert app["detectors"] == ["app-latency"]


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
    assert res.returncode == 4, res.stderr     # a plugin failed: said, and the rest ran
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    example = [f for f in lines if f.get("detector") == "example-slow-replies"]
    errors = [f for f in lines if f.get("kind") == "detector.error" and f["detector"] != "broken_import"]
    assert example and example[0]["layer"] == "finding" and example[0]["evidence"][0]["kind"] == "rpc.reply"
    assert len(errors) == 1 and errors[0]["detector"] == "raising"
    assert "correlate_detectors" in res.stderr   # the hook trace for plugin authors


def test_output_formats_from_the_outputs_hook(tmp_path, third_party_plugins):
    capture = HERE / "captures" / "atime-minus-one.pcap"
    html, trace = tmp_path / "r.html", tmp_path / "t.json"
    res = subprocess.run(CORRELATE + ["analyze", str(capture), "--output", f"html={html}",
                                      "--output", f"perfetto={trace}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stderr     # the broken fixture plugins: the outputs still written
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
        assert res.returncode == (0 if args == ["probes"] else 4), (args, res.stderr)
        assert "Traceback" not in res.stderr
        named = [line for line in res.stderr.splitlines() if "broken_import" in line and "skipped" in line]
        assert len(named) == 1, res.stderr
    # The other detectors still ran, and the report says one plugin did not.
    out = [json.loads(line) for line in
           subprocess.run(CORRELATE + ["analyze", "--json", str(capture)], capture_output=True,
                          text=True, timeout=120).stdout.splitlines()]
    assert any(f.get("detector") == "atime-minus-one" for f in out)
    assert any(f.get("kind") == "detector.error" and f["detector"] == "broken_import" for f in out)


def test_detector_options_are_listed_and_set(third_party_plugins, tmp_path):
    """The installed example plugin declares an option and a probe group; `plugins` lists them
    (with the built-in output formats); -o and --config change what it finds on a real capture."""
    rows = {r["name"]: r for r in json.loads(subprocess.run(
        CORRELATE + ["plugins", "--json"], capture_output=True, text=True, check=True).stdout)}
    assert rows["slow_replies"]["options"]["example-slow-replies.threshold_ms"]["default"] == 0.0
    assert rows["slow_replies"]["probe_groups"] == ["example-mkdir"]
    assert rows["outputs"]["outputs"] == ["html", "perfetto"]
    assert "rpc-unanswered.after_s" in rows["rpc_unanswered"]["options"]
    text = subprocess.run(CORRELATE + ["plugins"], capture_output=True, text=True, check=True).stdout
    assert "-o example-slow-replies.threshold_ms=0.0" in text and "probe groups: example-mkdir" in text

    capture = HERE / "captures" / "healthy.pcap"

    def slow_findings(*args):
        res = subprocess.run(CORRELATE + ["analyze", "--json", str(capture), *args],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 4, res.stderr     # the broken fixture plugins are installed
        return [f for f in map(json.loads, res.stdout.splitlines())
                if f.get("detector") == "example-slow-replies" and f["kind"] == "finding"]

    assert slow_findings()                                           # threshold 0: every reply
    assert not slow_findings("-o", "example-slow-replies.threshold_ms=1000")
    config = tmp_path / "detectors.toml"
    config.write_text("[example-slow-replies]\nthreshold_ms = 1000\n")
    assert not slow_findings("--config", str(config))
    assert slow_findings("--config", str(config), "-o", "example-slow-replies.threshold_ms=0")
    bad = subprocess.run(CORRELATE + ["analyze", str(capture), "-o", "example-slow-replies.limit=3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "its options: threshold_ms" in bad.stderr


def test_options_of_a_plugin_that_failed_to_import_are_a_warning(third_party_plugins):
    """broken_import never loads, so no detector of it exists to take `-o`: the run goes on
    with one warning naming the plugins not running, instead of refusing to start."""
    capture = HERE / "captures" / "atime-minus-one.pcap"
    res = subprocess.run(CORRELATE + ["analyze", "--json", str(capture), "-o", "broken-detector.limit=3",
                                      "-o", "atime-minus-one.enabled=true"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stderr      # the broken plugin: run, and said
    [warning] = [line for line in res.stderr.splitlines() if "ignored" in line]
    assert "broken-detector.limit" in warning and "broken_import" in warning
    assert any(json.loads(line).get("detector") == "atime-minus-one" for line in res.stdout.splitlines())
    # an option a loaded detector lacks is still refused
    bad = subprocess.run(CORRELATE + ["analyze", str(capture), "-o", "atime-minus-one.nosuch=1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "has no option" in bad.stderr
