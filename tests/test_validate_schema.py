"""The typed boundary for nested fields (correlate/validate.py NESTED): the decoder emits
exactly it on every committed capture, and a saved timeline with a wrong type deep inside
(the cases a fuzz campaign found disabling detectors) has that value dropped and counted,
while every detector goes on and its finding survives."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.diagnostics import Diagnostics
from correlate.events import to_json
from correlate.sources import open_input
from correlate.validate import clean_event

CAPTURES = Path(__file__).parent / "captures"


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")))
def test_the_decoder_emits_the_schema(capture):
    diag = Diagnostics(capture)
    for ev in open_input(str(CAPTURES / capture)).events:
        clean_event(json.loads(to_json(ev)), diag, f"frame {ev.get('frame')}")
    assert not diag.counts, diag.summary_lines()


def _saved(capture: str, tmp_path: Path, mutate) -> Path:
    res = subprocess.run([sys.executable, "-m", "correlate", "decode", "--json",
                          str(CAPTURES / capture)], capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    hits = sum(bool(mutate(e)) for e in events)
    assert hits, "the mutation found nothing to change"
    out = tmp_path / f"{capture}.jsonl"
    out.write_text("".join(json.dumps(e) + "\n" for e in events))
    return out


def _analyze(path: Path) -> tuple[list[dict], str]:
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()], res.stderr


def _set(path: str, value, proc: str | None = None, kind: str | None = None):
    """A mutation: the nested key `path` (dots, `[]` for every list item) set to `value`."""
    def mutate(ev):
        if (proc and ev.get("procedure") != proc) or (kind and ev.get("kind") != kind):
            return False
        parts, node = path.split("."), ev
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            return False
        node[parts[-1]] = value
        return True
    return mutate


CASES = [   # (capture, mutation, what stderr counts, the detector whose finding must survive)
    ("slow-brick.pcap", _set("result.brick_sets", [1, "x"], "GETSPEC", "rpc.reply"),
     "'result.brick_sets[]' of the wrong type", "slow-brick"),
    ("lock-wait.pcap", _set("cred.pid", [1, 2]), "'cred.pid' of the wrong type", "lock-wait"),
    ("reserve-full.pcap", _set("result.statfs.bavail", "0", "STATFS"),
     "'result.statfs.bavail' of the wrong type", "rpc-unanswered"),
    # the ATIME bit of `valid` is the finding's evidence: gone with it, but nothing fails
    ("atime-minus-one.pcap", _set("args.valid", "48", "SETATTR"),
     "'args.valid' of the wrong type", None),
    ("auth-rejected.pcap", _set("args.dict", "text", "SETVOLUME", "rpc.call"),
     "'args.dict' of the wrong type", "auth-rejected"),
]


@pytest.mark.parametrize("capture, mutate, counted, survivor", CASES,
                         ids=[c[2].split("'")[1] for c in CASES])
def test_a_wrong_type_deep_inside_is_dropped_and_counted(capture, mutate, counted, survivor, tmp_path):
    saved = _saved(capture, tmp_path, mutate)
    found, stderr = _analyze(saved)
    assert counted in stderr
    assert not [f for f in found if f.get("kind") == "detector.error"], stderr
    if survivor:
        assert survivor in {f.get("detector") for f in found if f.get("kind") == "finding"}


def test_a_plugins_finding_of_the_wrong_types_is_typed_before_any_output(tmp_path):
    """A third-party detector's finding goes through the same schema: a title that is a list,
    an unknown severity, evidence that is not events and a set in an extra field lose those
    values (counted on stderr), and every output still writes; a non-dict is dropped."""
    from correlate.detector import Detector
    from correlate.engine.detector_runner import DetectorRunner
    from correlate.outputs.html import write_html
    from correlate.outputs.terminal import format_finding

    class Sloppy(Detector):
        id = "sloppy"

        def observe(self, event):
            f = self.finding(event["time_ns"], severity="info", title="t", explanation="e",
                             remedy="r", evidence=[event], key="k")
            f.update(title=["not", "text"], severity="loud", brick={1, 2}, count="3")
            f["evidence"].append("not an event")
            return [f, "not a finding"]

    runner = DetectorRunner([Sloppy()])
    events = list(open_input(str(CAPTURES / "auth-rejected.pcap")).events)[:3]
    found = [f for ev in events for f in runner.observe(ev)] + runner.finish()
    assert not runner.disabled
    (first,) = [f for f in found if f["kind"] == "finding"]
    assert "title" not in first and "severity" not in first and first["brick"] == "{1, 2}"
    assert all(isinstance(e, dict) for e in first["evidence"])
    lines = " ".join(runner.drop_lines())
    for said in ("'title' of the wrong type", "unknown finding severities", "'count' of the wrong type",
                 "evidence entries that are not events", "not a JSON object"):
        assert said in lines, lines
    format_finding(first)
    write_html(found, str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").stat().st_size > 1000
