"""One readable line per event, and findings as short blocks, for a terminal.

Every string that came from the wire, a log or a process is passed through `safe_text`:
control characters (escape sequences included) are shown as \\xNN, never interpreted.
"""
from __future__ import annotations

import datetime as _dt
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

COLORS = {"wire": "36", "probe": "35", "log": "33", "finding": "1;31"}
SEVERITY_COLORS = {"info": "34", "warning": "33", "error": "31", "critical": "1;31"}
SHOWN_ARGS = ("path", "bname", "name", "gfid", "pargfid", "valid_flags", "atime", "atime_nsec",
              "mtime", "mtime_nsec", "fd", "offset", "size", "flags", "mode", "brick", "key",
              "volfile-key", "remote-subvolume", "process-uuid")


def safe_text(value, limit: int = 300) -> str:
    """Printable, single-line, bounded text from anything (wire bytes included)."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > limit:
        s = s[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", s).replace("\n", "\\n")


def format_time(time_ns: int) -> str:
    t = _dt.datetime.fromtimestamp(time_ns // 1_000_000_000, _dt.timezone.utc)
    return f"{t:%H:%M:%S}.{time_ns % 1_000_000_000 // 1000:06d}"


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
    latency = f" ({ev['latency_ns'] / 1e6:.3f} ms)" if ev.get("latency_ns") is not None else ""
    return f"{head} -> {result} {extra}".rstrip() + latency


def format_event(ev: dict) -> str:
    kind = ev.get("kind", "?")
    layer = ev.get("layer", "?")
    if kind.startswith("rpc."):
        body = _rpc_line(ev)
    elif kind.startswith("tcp."):
        detail = " ".join(f"{k}={safe_text(ev[k], 60)}" for k in
                          ("reason", "icmp_type", "icmp_code", "attempts", "by") if k in ev)
        waited = f" waited={ev['waited_ns'] / 1e9:.1f}s" if "waited_ns" in ev else ""
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
    else:
        body = safe_text({k: v for k, v in ev.items() if k not in ("time_ns", "layer", "kind")})
    return f"{format_time(ev['time_ns'])} {layer:<7} {kind:<13} {body}"


def format_finding(f: dict) -> str:
    """A finding as a block: title, explanation, evidence lines, remedy. A `finding.update`
    (the final count of a folded finding) shows the evidence its repeats added."""
    if f.get("kind") == "finding.update":
        lines = [f"== {f.get('detector')}: {safe_text(f.get('title'))}: seen {f.get('count')} times "
                 f"(last at {format_time(f['time_ns'])})"]
        lines.extend("     " + format_event(e) for e in f.get("evidence") or []
                     if isinstance(e, dict) and "time_ns" in e)
        return "\n".join(lines)
    lines = [f"== [{f.get('severity', '?').upper()}] {f.get('detector')}: {safe_text(f.get('title'))}"
             f" (at {format_time(f['time_ns'])}{', seen %d times' % f['count'] if f.get('count', 1) > 1 else ''})",
             "   " + safe_text(f.get("explanation", ""), 2000)]
    if f.get("chain"):
        lines.append("   chain:")
        lines.extend(f"     {i}. {safe_text(step, 400)}" for i, step in enumerate(f["chain"], 1))
    evidence = f.get("evidence") or []
    if evidence:
        lines.append("   evidence:")
        lines.extend("     " + format_event(e) for e in evidence if isinstance(e, dict) and "time_ns" in e)
    lines.append("   remedy: " + safe_text(f.get("remedy", ""), 2000))
    return "\n".join(lines)


def colorize(line: str, ev: dict, enabled: bool) -> str:
    if not enabled:
        return line
    code = (SEVERITY_COLORS.get(ev.get("severity", ""), "31") if ev.get("layer") == "finding"
            else COLORS.get(ev.get("layer", ""), "0"))
    return f"\x1b[{code}m{line}\x1b[0m"
