"""One readable line per event, and findings as short blocks, for a terminal.

Every string that came from the wire, a log or a process is passed through `safe_text`
(correlate.text): control characters (escape sequences included) are shown as \\xNN, never
interpreted.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time

from ..text import safe_line, safe_text  # noqa: F401  (outputs import them from here too)

COLORS = {"wire": "36", "probe": "35", "log": "33", "finding": "1;31"}
SEVERITY_COLORS = {"info": "34", "warning": "33", "error": "31", "critical": "1;31"}
SHOWN_ARGS = ("path", "bname", "name", "gfid", "pargfid", "valid_flags", "atime", "atime_nsec",
              "mtime", "mtime_nsec", "fd", "offset", "size", "flags", "mode", "brick", "key",
              "volfile-key", "remote-subvolume", "process-uuid")


def format_time(time_ns) -> str:
    """HH:MM:SS.uuuuuu (UTC); a time no date can hold is shown as its number."""
    try:
        t = _dt.datetime.fromtimestamp(time_ns // 1_000_000_000, _dt.timezone.utc)
        return f"{t:%H:%M:%S}.{time_ns % 1_000_000_000 // 1000:06d}"
    except (TypeError, ValueError, OverflowError, OSError):
        return f"@{safe_text(time_ns, 40)}ns"


def _num(value, default: int = 0):
    """An int from an event field that should hold one (anything else: the default)."""
    return value if type(value) is int else default


def _kv(d: dict, keys=SHOWN_ARGS) -> str:
    parts = []
    for k in keys:
        if k in d and d[k] not in (None, "", []):
            v = d[k]
            if isinstance(v, list):
                v = "|".join(map(str, v))
            parts.append(f"{k}={safe_text(v, 80)}")
    return " ".join(parts)


def _rpc_line(ev: dict) -> str:
    prog = f"{ev.get('program') or ev.get('program_num')} v{ev.get('version')}"
    head = (f"c{ev.get('conn', '?')} {ev.get('src')} -> {ev.get('dst')} "
            f"xid={ev.get('xid'):#x} {safe_text(prog)} {safe_text(ev.get('procedure') or ev.get('procedure_num'))}"
            if isinstance(ev.get("xid"), int) else f"{ev.get('src')} -> {ev.get('dst')}")
    if ev["kind"] == "rpc.call":
        return f"{head} {_kv(ev.get('args') or {})}".rstrip()
    if ev.get("reply_status") == "denied":
        result = f"DENIED {ev.get('reject_status')} {ev.get('auth_status') or ''}".rstrip()
    elif ev.get("accept_status") not in (None, "SUCCESS"):
        result = f"{ev.get('accept_status')}"
    elif ev.get("op_ret") is not None:
        result = f"op_ret={ev.get('op_ret')}"
        if ev.get("op_ret") == -1:
            result += f" {ev.get('errno_name') or ev.get('op_errno')}"
    else:
        result = "ok"
    extra = _kv(ev.get("result") or {}, ("port", "ERROR", "spec_size"))
    latency = f" ({ev['latency_ns'] / 1e6:.3f} ms)" if type(ev.get("latency_ns")) is int else ""
    return f"{head} -> {result} {extra}".rstrip() + latency


def format_event(ev: dict) -> str:
    """One line; every field is escaped, so no input text can drive the terminal."""
    kind = str(ev.get("kind", "?"))
    layer = str(ev.get("layer", "?"))
    if kind.startswith("rpc."):
        body = _rpc_line(ev)
    elif kind.startswith("tcp."):
        detail = " ".join(f"{k}={safe_text(ev[k], 60)}" for k in
                          ("reason", "icmp_type", "icmp_code", "attempts", "by", "direction",
                           "missing") if k in ev)
        waited = f" waited={ev['waited_ns'] / 1e9:.1f}s" if type(ev.get("waited_ns")) is int else ""
        body = f"c{ev.get('conn', '?')} {ev.get('src')} -> {ev.get('dst')} {detail}{waited}".rstrip()
    elif layer == "probe":
        args = _kv(ev.get("args") or {}, ("path", "fd", "atime", "atime_nsec", "mtime", "mtime_nsec"))
        ret = f" ret={ev['retval']}" if "retval" in ev else ""
        if ev.get("errno_name"):
            ret += f" {safe_text(ev['errno_name'], 20)}"
        if (ev.get("unsynced_writes") or {}).get("count"):
            ret += f" unsynced_writes={ev['unsynced_writes']['count']}/{ev['unsynced_writes'].get('bytes')}B"
        body = (f"{safe_text(ev.get('comm'))}[{ev.get('pid')}/{ev.get('tid')}] "
                f"{safe_text(ev.get('function'))} {args}{ret}").rstrip()
    elif layer == "log":
        body = f"{ev.get('level', '')} {safe_text(ev.get('domain', ''))} {safe_text(ev.get('message', ''))}"
    elif layer == "finding":
        body = f"[{ev.get('severity')}] {ev.get('detector')}: {safe_text(ev.get('title'))}"
        if kind == "finding.update":
            body = f"{ev.get('detector')}: {safe_text(ev.get('title'))} (seen {ev.get('count')} times)"
        elif kind == "detector.error":     # the reason, not only the fact
            body += f": {safe_text(ev.get('explanation'), 500)}"
    else:
        body = safe_text({k: v for k, v in ev.items() if k not in ("time_ns", "layer", "kind")})
    return safe_line(f"{format_time(ev.get('time_ns'))} {layer:<7} {kind:<13} {body}")


def format_finding(f: dict) -> str:
    """A finding as a block: title, explanation, evidence lines, remedy. A `finding.update`
    (the final count of a folded finding) shows the evidence its repeats added."""
    evidence = f.get("evidence") if isinstance(f.get("evidence"), list) else []
    if f.get("kind") == "finding.update":
        lines = [f"== {safe_text(f.get('detector'))}: {safe_text(f.get('title'))}: seen "
                 f"{_num(f.get('count'), '?')} times (last at {format_time(f.get('time_ns'))})"]
        if f.get("explanation"):     # what the detector knows now (a count that grew since)
            lines.append("   " + safe_text(f["explanation"], 2000))
        lines.extend("     " + format_event(e) for e in evidence if isinstance(e, dict) and "time_ns" in e)
        return "\n".join(safe_line(line) for line in lines)
    count = _num(f.get("count"), 1)
    lines = [f"== [{safe_text(f.get('severity') or '?').upper()}] {safe_text(f.get('detector'))}: "
             f"{safe_text(f.get('title'))}"
             f" (at {format_time(f.get('time_ns'))}{', seen %d times' % count if count > 1 else ''})",
             "   " + safe_text(f.get("explanation", ""), 2000)]
    if isinstance(f.get("chain"), list) and f["chain"]:
        lines.append("   chain:")
        lines.extend(f"     {i}. {safe_text(step, 400)}" for i, step in enumerate(f["chain"], 1))
    if evidence:
        lines.append("   evidence:")
        lines.extend("     " + format_event(e) for e in evidence if isinstance(e, dict) and "time_ns" in e)
    lines.append("   remedy: " + safe_text(f.get("remedy", ""), 2000))
    return "\n".join(safe_line(line) for line in lines)


def colorize(line: str, ev: dict, enabled: bool) -> str:
    if not enabled:
        return line
    code = (SEVERITY_COLORS.get(str(ev.get("severity", "")), "31") if ev.get("layer") == "finding"
            else COLORS.get(str(ev.get("layer", "")), "0"))
    return f"\x1b[{code}m{line}\x1b[0m"


COLOR_CHOICES = ("auto", "always", "never")


def use_color(choice: str, stream) -> bool:
    """--color: `always`, `never`, or `auto`: when the stream is a terminal, NO_COLOR is unset
    or empty (no-color.org) and TERM is not `dumb`."""
    if choice == "always":
        return True
    if choice == "never":
        return False
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def color_option(f):
    """The --color option, the same on every command that prints to a terminal."""
    import click
    return click.option("--color", "color", type=click.Choice(COLOR_CHOICES), default="auto",
                        show_default=True,
                        help="Colour the output: auto = when stdout is a terminal, NO_COLOR is "
                             "unset and TERM is not dumb.")(f)


class Progress:
    """A one-line counter on stderr, only when stderr is a terminal (and not TERM=dumb)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.count = 0
        self.shown = False
        self.next_at = time.monotonic() + 1.0

    def tick(self, ev: dict) -> None:
        self.count += 1
        if self.enabled and self.count % 1000 == 0 and time.monotonic() >= self.next_at:
            self.stream.write(f"\r{self.count} events, at {format_time(ev.get('time_ns', 0))} ")
            self.stream.flush()
            self.shown = True
            self.next_at = time.monotonic() + 1.0

    def wrap(self, events):
        if not self.enabled:
            return events          # not a terminal: no layer for every event to pass
        return self._counted(events)

    def _counted(self, events):
        for ev in events:
            self.tick(ev)
            yield ev

    def clear(self) -> None:
        """Before other output on the terminal: the counter line is wiped, not run into."""
        if self.shown:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()
            self.shown = False

    def done(self) -> None:
        self.clear()
