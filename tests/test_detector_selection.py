"""Choosing detectors and suppressing findings (correlate/engine/finding_policy.py), on the lab's real
captures: what is left out is exactly what was asked, and it is counted, never lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from correlate import hookimpl
from correlate.cli import main
from correlate.detector import load_detectors
from correlate.errors import CorrelateError
from correlate.engine.finding_policy import FindingPolicy, Rule, from_config, parse_rule
from correlate.plugin_manager import get_plugin_manager

CAPTURES = Path(__file__).parent / "captures"
HANG = CAPTURES / "brick-hang.pcap"
RESERVE = CAPTURES / "reserve-full.pcap"        # no-space and rpc-unanswered
STALE = CAPTURES / "stale-handle.pcap"          # stale-handle (with its brick) and rpc-unanswered
WITH_FINDINGS = ["brick-hang.pcap", "reserve-full.pcap", "stale-handle.pcap", "lock-wait.pcap",
                 "split-brain.pcap", "slow-brick.pcap"]


def invoke(*args, code: int = 0):
    res = CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)
    assert res.exit_code == code, (res.stdout, res.stderr)
    return res


def findings(*args) -> tuple[list[dict], list[dict], str]:
    """(findings, finding.suppressed events, stderr) of `analyze --json`."""
    res = invoke("analyze", "--json", *args)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    return ([e for e in events if e.get("kind") == "finding"],
            [e for e in events if e.get("kind") == "finding.suppressed"], res.stderr)


def detectors_of(found: list[dict]) -> set[str]:
    return {f["detector"] for f in found}


def builtin_ids() -> set[str]:
    detectors, _errors = load_detectors(get_plugin_manager(), {})
    return {d.id for d in detectors}


# -- the policy by itself ----------------------------------------------------------------------

def test_spec_forms():
    assert parse_rule("stale-handle") == Rule("stale-handle")
    assert parse_rule("stale-handle:brick=127.0.0.2:/srv/b1") == \
        Rule("stale-handle", (("brick", "127.0.0.2:/srv/b1"),))
    assert parse_rule("rpc-unanswered:volume=vol1,path=/dir/*").fields == \
        (("volume", "vol1"), ("path", "/dir/*"))
    assert parse_rule("split-brain:path=/a,b,gfid=c0*").fields == (("path", "/a,b"), ("gfid", "c0*"))
    for bad in ("", ":brick=x", "stale-handle:brick", "stale-handle:brick=", "x:9a=1", "x:=y"):
        with pytest.raises(ValueError):
            parse_rule(bad)


def test_rule_matches_the_findings_own_fields():
    rule = parse_rule("slow-brick:brick=*/b2,procedure=WRITE")
    f = {"detector": "slow-brick", "brick": "127.0.0.2:49245 /srv/x/b2", "procedure": "WRITE"}
    assert rule.matches(f)
    assert not rule.matches({**f, "procedure": "READ"})
    assert not rule.matches({**f, "detector": "no-space"})
    assert not rule.matches({k: v for k, v in f.items() if k != "brick"})   # no field: no match
    assert parse_rule("lock-wait:waiter=*12472*").matches({"detector": "lock-wait", "waiter": ["a", "pid 12472"]})
    assert parse_rule("app-latency:total_ns=12*").matches({"detector": "app-latency", "total_ns": 1234})
    assert parse_rule("*:volume=v1").matches({"detector": "anything", "volume": "v1"})


def test_policy_counts_per_rule_and_drops_repeats_of_a_suppressed_cause():
    policy = FindingPolicy(rules=[parse_rule("a:brick=b1"), parse_rule("c")])
    assert policy.suppress(("a", "k1"), {"detector": "a", "brick": "b1"})
    assert policy.suppress(("a", "k1"), {"detector": "a", "brick": "other"})    # same cause
    assert not policy.suppress(("a", "k2"), {"detector": "a", "brick": "b2"})
    assert policy.suppress(("c", "k"), {"detector": "c"})
    assert policy.suppressed == 2
    assert policy.summary() == "suppressed 2 findings: a x1 (brick=b1), c x1"
    ev = policy.summary_event(5)
    assert ev["kind"] == "finding.suppressed" and ev["count"] == 2 and ev["layer"] == "finding"
    assert [r["count"] for r in ev["rules"]] == [1, 1]
    assert FindingPolicy().summary() is None and FindingPolicy().summary_event(0) is None


def test_selection_and_unknown_names():
    policy = FindingPolicy(only=["a", "b"], disabled=["b"])
    assert [policy.runs(x) for x in "abc"] == [True, False, False]
    policy.bind({"a": "pa", "b": "pb", "c": "pc"})
    assert policy.idle_plugins() == {"pb", "pc"}
    with pytest.raises(ValueError, match=r"no detector 'zz'; detectors: a, b"):
        FindingPolicy(rules=[Rule("zz")]).bind({"a": "p", "b": "p"})


def test_config_tables():
    only, off, rules = from_config({"detectors": {"enable": ["a"], "disable": ["b"]},
                                    "suppress": [{"detector": "a", "brick": "h:/b", "pid": 7}]}, "f")
    assert (only, off, rules) == (["a"], ["b"], [Rule("a", (("brick", "h:/b"), ("pid", "7")))])
    assert from_config({}, "f") == (None, [], [])
    for bad in ({"detectors": {"enabled": ["a"]}}, {"detectors": {"disable": "a"}},
                {"suppress": {"detector": "a"}}, {"suppress": [{"brick": "x"}]},
                {"suppress": [{"detector": "a", "brick": ["x"]}]}):
        with pytest.raises(ValueError):
            from_config(bad, "f")


# -- selection on real captures ----------------------------------------------------------------

def test_no_detector_removes_only_that_detector():
    hang, _, _ = findings(HANG)
    assert "brick-not-responding" in detectors_of(hang)
    assert not findings(HANG, "--no-detector", "brick-not-responding")[0]
    base, _, _ = findings(RESERVE)
    assert {"no-space", "rpc-unanswered"} <= detectors_of(base)
    for off in (["--no-detector", "no-space"], ["-o", "no-space.enabled=false"]):
        left, _, _ = findings(RESERVE, *off)
        assert detectors_of(left) == detectors_of(base) - {"no-space"}
        assert [f["title"] for f in left] == [f["title"] for f in base if f["detector"] != "no-space"]


def test_detector_restricts_to_the_named_ones():
    base, _, _ = findings(RESERVE)
    only, _, _ = findings(RESERVE, "--detector", "no-space")
    assert detectors_of(only) == {"no-space"}
    assert [f["title"] for f in only] == [f["title"] for f in base if f["detector"] == "no-space"]
    both, _, _ = findings(RESERVE, "--detector", "no-space", "--detector", "rpc-unanswered")
    assert [f["title"] for f in both] == [f["title"] for f in base]


def test_config_file_selects_and_the_command_line_replaces_enable(tmp_path):
    base, _, _ = findings(RESERVE)
    cfg = tmp_path / "site.toml"
    cfg.write_text('[detectors]\ndisable = ["rpc-unanswered"]\n')
    assert detectors_of(findings(RESERVE, "--config", cfg)[0]) == detectors_of(base) - {"rpc-unanswered"}
    cfg.write_text('[detectors]\nenable = ["rpc-unanswered"]\n\n[no-space]\nenabled = false\n')
    assert detectors_of(findings(RESERVE, "--config", cfg)[0]) == {"rpc-unanswered"}
    # --detector replaces the file's enable list; the file's [no-space] enabled = false stays
    assert not findings(RESERVE, "--config", cfg, "--detector", "no-space")[0]
    assert detectors_of(findings(RESERVE, "--config", cfg, "--detector", "no-space",
                                 "-o", "no-space.enabled=true")[0]) == {"no-space"}


# -- suppression on real captures --------------------------------------------------------------

def test_suppress_by_brick_removes_exactly_the_matching_findings():
    base, _, _ = findings(STALE)
    stale = [f for f in base if f["detector"] == "stale-handle"]
    assert stale and all(f.get("brick") for f in stale)
    brick = stale[0]["brick"]
    left, summary, err = findings(STALE, "--suppress", f"stale-handle:brick={brick}")
    gone = [f for f in stale if f["brick"] == brick]
    assert [f["title"] for f in left] == [f["title"] for f in base if f not in gone]
    line = next(line for line in err.splitlines() if "suppressed" in line)
    noun = "finding" if len(gone) == 1 else "findings"
    assert line == f"correlate: suppressed {len(gone)} {noun}: stale-handle x{len(gone)} (brick={brick})"
    assert summary and summary[0]["count"] == len(gone)
    # another brick of the same detector: nothing suppressed, nothing said
    left, summary, err = findings(STALE, "--suppress", "stale-handle:brick=127.0.0.2:/srv/elsewhere")
    assert [f["title"] for f in left] == [f["title"] for f in base]
    assert not summary and "suppressed" not in err


@pytest.mark.parametrize("name", WITH_FINDINGS)
def test_suppress_any_detector_by_a_field_glob(name):
    """`*:brick=*` takes out every finding that names a brick, and only those."""
    base, _, _ = findings(CAPTURES / name)
    with_brick = [f["title"] for f in base if f.get("brick")]
    left, summary, err = findings(CAPTURES / name, "--suppress", "*:brick=*")
    assert [f["title"] for f in left] == [f["title"] for f in base if not f.get("brick")]
    assert sum(s["count"] for s in summary) == len(with_brick)
    assert (f"suppressed {len(with_brick)} finding" in err) == bool(with_brick)


def test_suppressed_findings_are_not_forwarded_to_plugins(tmp_path):
    class Collector:
        def __init__(self):
            self.seen = []

        @hookimpl
        def correlate_finding(self, finding):
            self.seen.append(finding["detector"])

    collector, pm = Collector(), get_plugin_manager()
    pm.register(collector, name="collecting")
    try:
        invoke("analyze", RESERVE, "--suppress", "no-space")
    finally:
        pm.unregister(name="collecting")
    assert collector.seen and "no-space" not in collector.seen


def test_config_file_suppress_and_timeline(tmp_path):
    base, _, _ = findings(RESERVE)
    brick = next(f["brick"] for f in base if f["detector"] == "no-space")
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[[suppress]]\ndetector = "no-space"\nbrick = "{brick}"\n')
    left, summary, _ = findings(RESERVE, "--config", cfg)
    assert "no-space" not in detectors_of(left) and summary[0]["rules"][0]["fields"] == {"brick": brick}
    res = invoke("timeline", "--json", RESERVE, "--config", cfg)
    kinds = [json.loads(line).get("kind") for line in res.stdout.splitlines()]
    assert "finding.suppressed" in kinds and "suppressed 1 finding: no-space x1" in res.stderr
    text = invoke("analyze", RESERVE, "--config", cfg)
    assert "finding.suppressed" not in text.stdout and "suppressed 1 finding" in text.stderr


# -- usage errors: one line, exit 2 ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--no-detector", "nope"], ["--detector", "nope"], ["-o", "nope.enabled=false"],
    ["--suppress", "nope:brick=x"], ["--suppress", "stale-handle:brick"],
    ["-o", "stale-handle.enabled=maybe"], ["--suppress", ":x=1"],
])
def test_bad_names_and_specs_are_one_line_usage_errors(args):
    for cmd in ("analyze", "timeline"):
        res = invoke(cmd, HANG, *args, code=2)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("correlate: "), res.stderr
    if "nope" in " ".join(args):
        assert all(i in lines[0] for i in builtin_ids())      # the known ids are listed


def test_bad_config_file_is_a_one_line_usage_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    for text in ('[detectors]\ndisable = ["nope"]\n', '[[suppress]]\nbrick = "x"\n',
                 '[detectors]\nenable = "stale-handle"\n', "[detectors\n"):
        cfg.write_text(text)
        res = invoke("analyze", HANG, "--config", cfg, code=2)
        assert len(res.stderr.splitlines()) == 1, res.stderr


# -- correlate detectors -----------------------------------------------------------------------

def test_detectors_lists_every_builtin_with_its_options():
    rows = json.loads(invoke("detectors", "--json").stdout)
    by_id = {r["id"]: r for r in rows}
    detectors, _ = load_detectors(get_plugin_manager(), {})
    assert set(by_id) == {d.id for d in detectors}
    for det in detectors:
        row = by_id[det.id]
        assert row["distribution"] == "gluster-correlate" and row["description"]
        assert {k: v["default"] for k, v in row["options"].items()} == \
            {**{k: o.default for k, o in det.options.items()}, "enabled": True}
        assert row["enabled"] is True and row["suppressed_by"] == []
        kinds = det.wants.kinds
        assert row["wants"]["kinds"] == (sorted(kinds) if kinds is not None else None)
    assert by_id["lost-write"]["needs"] == ["probe"] and by_id["no-space"]["needs"] == []


def test_detectors_says_what_the_config_disables(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text('[detectors]\ndisable = ["slow-brick"]\n[[suppress]]\ndetector = "no-space"\n')
    rows = {r["id"]: r for r in json.loads(invoke("detectors", "--json", "--config", cfg,
                                                   "--no-detector", "lock-wait").stdout)}
    assert {i for i, r in rows.items() if not r["enabled"]} == {"slow-brick", "lock-wait"}
    assert rows["no-space"]["suppressed_by"] == ["(all its findings)"]
    text = invoke("detectors", "--config", cfg).stdout
    assert "slow-brick  [disabled]" in text and "no-space  [disabled]" not in text
    assert invoke("detectors", "--no-detector", "nope", code=2).stderr.count("\n") == 1


def test_plugins_still_lists_detectors_and_options():
    rows = {r["name"]: r for r in json.loads(invoke("plugins", "--json").stdout)}
    assert rows["rpc_unanswered"]["detectors"] == ["rpc-unanswered"]
    assert "rpc-unanswered.after_s" in rows["rpc_unanswered"]["options"]
    assert rows["app_latency"]["probe_groups"] == ["io"]


# -- probes of a disabled detector -------------------------------------------------------------

def test_probes_of_a_disabled_plugin_are_not_requested():
    from correlate.sources.probes import select_specs
    assert any(s.group == "io" for s in select_specs(["all"]))
    assert not any(s.group == "io" for s in select_specs(["all"], skip_plugins={"app_latency"}))
    assert select_specs(["gfapi"], skip_plugins={"app_latency"}) == select_specs(["gfapi"])
    with pytest.raises(CorrelateError, match="detectors are all disabled"):
        select_specs(["io"], skip_plugins={"app_latency"})


def test_suppress_unanswered_calls_by_volume():
    """rpc-unanswered names the brick, volume and client of the call (from its SETVOLUME)."""
    short = ("-o", "rpc-unanswered.after_s=1")
    base, _, _ = findings(HANG, *short)
    hung = [f for f in base if f["detector"] == "rpc-unanswered" and f.get("severity") == "warning"]
    assert hung and {f["volume"] for f in hung} == {"hangvol"}
    assert all(f["brick"].endswith("/hangvol/b2") and f["client"] for f in hung)
    left, summary, _ = findings(HANG, *short, "--suppress", "rpc-unanswered:volume=hangvol")
    assert [f["title"] for f in left] == [f["title"] for f in base if f not in hung]
    assert "brick-not-responding" in detectors_of(left) and summary[0]["count"] == len(hung)
