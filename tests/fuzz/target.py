"""One fuzz input through every command and renderer, in this process (fast enough to run
thousands): `decode` (text, --json, --fields), `analyze` (findings, --events, --json, an
--output plugin format), `run --pcap/--log`, `timeline` (text, --ladder, --json, --html,
--perfetto, --pcapng), and the detector runtime folding findings built from the input's own
(hostile) values.

A run passes when every command ends with an exit code of 0, 1 (damage, with what came before
kept) or 2 (an input error, one line), prints no traceback and no raw control character, writes
its stdout as strict UTF-8, and its files are well formed. Anything else raises `Failure`.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import click

from correlate.cli import main
from correlate.detector import Detector
from correlate.engine.detector_runner import DetectorRunner
from correlate.errors import CorrelateError
from correlate.outputs.html import write_html
from correlate.outputs.terminal import format_finding
from correlate.sources import open_input

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "captures"
LOGS = ROOT / "tests" / "logs"
REGRESSIONS = Path(__file__).parent / "regressions"
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")
HTML_RAW = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
TIME_LIMIT_S = 60           # one input through every command; more is a hang
EXTENSIONS = {"capture": ".pcap", "timeline": ".jsonl", "log": ".log"}


class Failure(AssertionError):
    """A command crashed, hung, or let something raw through."""


# -- seeds ------------------------------------------------------------------------------------

def seeds(workdir: Path) -> dict[str, list[bytes]]:
    """The committed real captures (also as pcapng and gzip'd), the real Gluster log
    excerpts, and timelines saved by `analyze` from both."""
    from correlate.outputs.pcapng_annotate import annotate_pcapng
    captures = sorted(CAPTURES.glob("*.pcap"))
    logs = sorted(LOGS.glob("*.log"))
    out: dict[str, list[bytes]] = {"capture": [], "timeline": [], "log": []}
    for cap in captures:
        out["capture"].append(cap.read_bytes())
        ng = workdir / (cap.stem + ".pcapng")
        annotate_pcapng(str(cap), list(_events_with_findings(cap)), str(ng))
        out["capture"].append(ng.read_bytes())
    out["log"] = [p.read_bytes() for p in logs]
    for i, cap in enumerate(captures):
        inputs = [cap] + ([logs[i % len(logs)]] if logs else [])
        saved = workdir / f"{cap.stem}.jsonl"
        code, _out, err = run_command(["analyze", *map(str, inputs), "--timeline", str(saved)])
        if code != 0:
            raise RuntimeError(f"cannot save a seed timeline from {cap}: {err[-500:]!r}")
        out["timeline"].append(saved.read_bytes())
    return out


def _events_with_findings(cap: Path):
    inp = open_input(str(cap))
    yield from inp.events


# -- running a command ------------------------------------------------------------------------

def run_command(args: list[str], stdout=None, encoding: str = "utf-8") -> tuple[int, bytes, bytes]:
    """`correlate ARGS` in this process, stdout and stderr as strict pipes of `encoding`
    would take them; `stdout`: another binary stream for stdout (a full device)."""
    out, err = stdout or io.BytesIO(), io.BytesIO()
    old = sys.stdout, sys.stderr, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    sys.stdout = io.TextIOWrapper(out, encoding=encoding, errors="strict")
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="strict")
    code = 0
    try:
        result = main.main(args=args, prog_name="correlate", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CorrelateError as exc:          # what the real command prints as one line
        sys.stderr.write(f"correlate: {exc}\n")
        code = 2
    except click.ClickException as exc:    # a usage error (--pcapng on what is not a capture)
        exc.show(sys.stderr)
        code = exc.exit_code
    except click.exceptions.Abort as exc:
        raise Failure(f"correlate {' '.join(args)}: Aborted! ({exc.__context__!r})") from exc
    finally:
        wrappers = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = old[0], old[1]
        signal.signal(signal.SIGINT, old[2])
        signal.signal(signal.SIGTERM, old[3])
        for w in wrappers:
            try:
                w.flush()
            except Exception as exc:   # an unencodable character reached the stream
                raise Failure(f"correlate {' '.join(args)}: output not writable: {exc!r}") from exc
            finally:
                w.detach()
    return code, out.getvalue() if stdout is None else b"", err.getvalue()


def _check(args: list[str], code: int, out: bytes, err: bytes) -> None:
    where = f"correlate {' '.join(args)}"
    if code not in (0, 1, 2):
        raise Failure(f"{where}: exit code {code}: {err[-2000:]!r}")
    for name, stream in (("stdout", out), ("stderr", err)):
        m = RAW_CONTROL.search(stream)
        if m:
            raise Failure(f"{where}: raw control character on {name}: "
                          f"{stream[max(0, m.start() - 120):m.end() + 40]!r}")
    if b"Traceback" in err:
        raise Failure(f"{where}: traceback: {err[-2000:]!r}")
    if b"disabled detectors" in err or b"failed and was disabled" in out:
        raise Failure(f"{where}: a detector failed on this input: {err[-2000:]!r}")
    if code == 2 and b"Usage:" not in err and len(err.splitlines()) > 1 \
            and b"correlate: " not in err.splitlines()[-1]:
        raise Failure(f"{where}: an input error must be one clear line: {err[-2000:]!r}")


def _commands(kind: str, path: str, tmp: Path) -> list[list[str]]:
    html, trace, jsonl = str(tmp / "r.html"), str(tmp / "t.json"), str(tmp / "saved.jsonl")
    cmds = [
        ["analyze", path], ["analyze", "--events", path], ["analyze", "--json", "--events", path],
        ["analyze", path, "--timeline", jsonl, "--output", f"perfetto={tmp / 'o.json'}"],
        ["timeline", path], ["timeline", "--ladder", path], ["timeline", "--json", path],
        ["timeline", "--detect", path, "--html", html, "--perfetto", trace],
        ["timeline", path, "--since", "+0s", "--until", "+1h", "--conn", "1", "--layer", "wire",
         "--layer", "finding", "--layer", "log"],
        ["timeline", path, "--gfid", "0", "--path", "/", "--pid", "1", "--host-filter", "a"],
        # with real inputs of other kinds: the merge, and clock sync against a real capture
        ["analyze", path, str(LOGS / "glusterd.log"), str(CAPTURES / "healthy.pcap")],
        ["timeline", "--host", f"a={path}", "--host", f"b={CAPTURES / 'healthy.pcap'}", "--sync-clocks",
         "--ladder"],
    ]
    if kind == "capture":
        cmds += [["decode", path], ["decode", "--json", path],
                 ["decode", "--fields", "time_ns,kind,src,xid,procedure,args.path,op_errno,latency_ns", path],
                 ["timeline", path, "--pcapng", str(tmp / "a.pcapng")],
                 ["run", "--pcap", path, "--window-ms", "0"]]
    if kind == "log":
        cmds.append(["run", "--log", path, "--window-ms", "0"])
    return cmds


def _check_files(tmp: Path) -> None:
    page = tmp / "r.html"
    if page.exists():
        text = page.read_text(encoding="utf-8")
        m = HTML_RAW.search(text)
        if m:
            raise Failure(f"raw control character in the HTML report: {text[max(0, m.start() - 120):m.end() + 40]!r}")
        page.unlink()
    for trace in (tmp / "t.json", tmp / "o.json"):
        if trace.exists():
            json.loads(trace.read_text(encoding="utf-8"))
            trace.unlink()
    annotated = tmp / "a.pcapng"
    if annotated.exists():
        inp = open_input(str(annotated))
        for _ in inp.events:
            pass
        if inp.diag.fatal:
            raise Failure(f"the annotated pcapng does not read back: {inp.diag.fatal}")
        annotated.unlink()
    saved = tmp / "saved.jsonl"
    if saved.exists():
        inp = open_input(str(saved))
        for _ in inp.events:
            pass
        if inp.diag.counts:
            raise Failure(f"a timeline we wrote does not read back cleanly: {inp.diag.summary_lines()}")
        saved.unlink()


class EchoDetector(Detector):
    """Findings made of the input's own values (whatever a timeline carried in them), folded
    under keys taken from those values: the detector runtime must hold with any of them."""
    id = "fuzz-echo"

    def observe(self, event):
        key = event.get("src", event.get("kind"))
        return [self.finding(event["time_ns"], severity="info", title=str(event.get("kind")),
                             explanation=str(event.get("message", "")), remedy="-",
                             evidence=[event], key=key if isinstance(key, str) else repr(key)[:50])]


def _runtime(path: str, tmp: Path) -> None:
    try:
        inp = open_input(path)
        runner = DetectorRunner([EchoDetector()])
        findings = []
        for ev in inp.events:
            findings.extend(runner.observe(ev))
            if len(findings) > 200:
                break
        findings.extend(runner.finish())
    except CorrelateError:
        return
    if runner.disabled:
        raise Failure(f"detector runtime: {runner.disabled}")
    for f in findings:
        text = format_finding(f).encode("utf-8")
        m = RAW_CONTROL.search(text.replace(b"\n", b" "))
        if m:
            raise Failure(f"format_finding let a control character through: {text[:300]!r}")
    write_html(findings, str(tmp / "r.html"))
    _check_files(tmp)


def check_input(kind: str, data: bytes) -> int:
    """Run one input through everything; returns the number of commands run."""
    def timeout(signum, frame):
        raise Failure(f"hang: one {kind} input took more than {TIME_LIMIT_S} s")

    with tempfile.TemporaryDirectory(prefix="correlate-fuzz-") as d:
        tmp = Path(d)
        path = str(tmp / ("input" + EXTENSIONS[kind]))
        Path(path).write_bytes(data)
        old = signal.signal(signal.SIGALRM, timeout)
        signal.alarm(TIME_LIMIT_S)
        try:
            commands = _commands(kind, path, tmp)
            for args in commands:
                code, out, err = run_command(args)
                _check(args, code, out, err)
                _check_files(tmp)
            _runtime(path, tmp)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return len(commands) + 1


def save_regression(kind: str, data: bytes, failure: str) -> Path:
    """A failing input, committed under tests/fuzz/regressions/ and replayed by test_fuzz."""
    import hashlib
    REGRESSIONS.mkdir(exist_ok=True)
    # a command-line edge is saved as the draw that failed (.edge): add it to the lists of
    # tests/fuzz/command_lines.py once fixed
    name = f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}{EXTENSIONS.get(kind, '.edge')}"
    path = REGRESSIONS / name
    path.write_bytes(data)
    (REGRESSIONS / (name + ".txt")).write_text(failure[:4000] + "\n")
    return path


def regression_inputs() -> list[tuple[str, Path]]:
    if not REGRESSIONS.exists():
        return []
    kinds = {ext: kind for kind, ext in EXTENSIONS.items()}
    return [(kinds[p.suffix], p) for p in sorted(REGRESSIONS.iterdir()) if p.suffix in kinds]


os.environ.setdefault("COLUMNS", "120")     # the ladder's width, the same on every machine
