"""The one check where untrusted text becomes events: saved timelines and Gluster logs.

A timeline or a log is sent by whoever's system broke, so it is as untrusted as a capture.
After `clean_event` an event holds to the contract of docs/events.md as firmly as one from the
decoder: the required keys have their types, `time_ns` lies between 1970 and 2262 (ns as a signed
64-bit number, as every renderer and pcapng can hold them), the known keys have their documented types (a key of the wrong type is
dropped), every integer fits 64 bits, every float is finite, no string holds a lone surrogate
(it could not be written out as UTF-8), and nesting is shallow. What was changed or dropped is
counted in the input's Diagnostics; an event that cannot be repaired is skipped and counted.
Control characters are left in place: each renderer escapes them for its own medium.
"""
from __future__ import annotations

import math
import re

from .diagnostics import Diagnostics

MIN_TIME_NS = 0
MAX_TIME_NS = 2 ** 63 - 1                      # 2262-04-11 UTC: ns as a signed 64-bit number
MIN_INT, MAX_INT = -(2 ** 63), 2 ** 64 - 1     # what the wire and the probes can carry
MAX_DEPTH = 24                                 # decoded args nest 3-4 deep; evidence one more
MAX_EVIDENCE = 1_000                           # evidence events kept per finding

REQUIRED_STR = ("layer", "kind", "source")
# Keys whose type the renderers and detectors rely on (docs/events.md). None is allowed.
STR_KEYS = frozenset({
    "host", "src", "dst", "program", "procedure", "reply_status", "accept_status",
    "reject_status", "auth_status", "errno_name", "decode_error", "reason", "by", "icmp_from",
    "function", "library", "comm", "level", "level_name", "file", "domain", "xlator", "message",
    "strerror", "callstack", "continuation", "detector", "id", "severity", "title",
    "explanation", "remedy", "key", "opcode", "mount", "syscall", "fuse_errno_name",
    "syscall_errno_name", "ssl_function", "verify_error"})
INT_KEYS = frozenset({
    "conn", "frame", "xid", "program_num", "version", "procedure_num", "op_ret", "op_errno",
    "latency_ns", "handshake_ns", "icmp_type", "icmp_code", "attempts", "waited_ns", "pid",
    "tid", "duration_ns", "msgid", "line", "graph_id", "log_line", "repeated",
    "count", "payload_bytes", "continuation_dropped", "clock_offset_ns", "errno",
    "opcode_num", "unique", "nodeid", "out_nodeid", "connection", "reply_tid", "syscall_nr",
    "ret", "fd", "fuse_requests", "ssl_lib", "ssl_reason", "verify_result"})
BOOL_KEYS = frozenset({"in_syscall"})
TIME_KEYS = frozenset({"call_time_ns", "first_time_ns", "last_time_ns"})
DICT_KEYS = frozenset({"args", "result", "cred", "fields", "mismatch"})
# A probe's return value: a number, or a pointer as hex text ("0x16c06c38")
UNION_KEYS = {"retval": (int, str)}
SEVERITIES = ("info", "warning", "error", "critical")

# The nested fields detectors and outputs read, with their types, per layer: as the capture
# decoder and the probes emit them (tests/test_validate_schema.py checks both against this:
# every committed capture and probe recording, and the records of every probe kind). A dict
# is a nested schema (the value must be a dict; keys not named are free), [T] a list whose
# items are T, a tuple of types any of them; a value of another type is dropped and counted
# by its path.
_IATT = {"ia_gfid": str, "ia_type": str, "ia_size": int, "ia_nlink": int, "ia_uid": int,
         "ia_gid": int, "ia_atime": int, "ia_atime_nsec": int, "ia_mtime": int,
         "ia_mtime_nsec": int, "ia_ctime": int, "ia_ctime_nsec": int, "mode": int}
_FLOCK = {"type": int, "whence": int, "start": int, "len": int, "pid": int, "lk_owner": str}
_STATFS = {k: int for k in ("bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree",
                            "favail", "fsid", "flag", "namemax")}
WIRE_NESTED = {
    "args": {"gfid": str, "pargfid": str, "oldgfid": str, "newgfid": str, "bname": str,
             "oldbname": str, "newbname": str, "name": str, "volume": str, "brick": str,
             "key": str, "cmd": int, "type": int, "valid": int, "port": int, "pid": int,
             "uid": int, "gid": int, "namelen": int, "fd": int, "flags": int, "atime": int,
             "atime_nsec": int, "mtime": int, "mtime_nsec": int, "dict": dict, "xdata": dict, "flock": _FLOCK, "valid_flags": [str]},
    "result": {"port": int, "dict": dict, "xdata": dict, "flock": _FLOCK, "statfs": _STATFS,
               "bricks": [[str]], "brick_sets": [{"name": str, "type": str, "bricks": [[str]]}],
               **{k: _IATT for k in ("stat", "prestat", "poststat", "buf", "preparent",
                                     "postparent", "preoldparent", "postoldparent",
                                     "prenewparent", "postnewparent")}},
    "cred": {"pid": int, "uid": int, "gid": int, "lk_owner": str, "groups": [int]},
}
# A probe's arguments as correlate/probe/bcc_records.py and the stap backend read them:
# pointers (fd, fsp, fs) as hex text, C integers and the fields of the time structs as ints.
_TIMES = ("atime", "atime_nsec", "mtime", "mtime_nsec", "ctime", "ctime_nsec", "create_time",
          "create_time_nsec")
PROBE_NESTED = {
    "args": {"fd": str, "fsp": str, "fs": str, "path": str, "path_truncated": bool,
             "flags": int, "mode": int, "count": int, "offset": int, "cmd": int, "follow": int,
             "mask": int, **{k: int for k in _TIMES}},
    "unsynced_writes": {"count": int, "bytes": int, "first_time_ns": int, "last_time_ns": int,
                        "offset_lo": int, "offset_hi": int, "opened_before_probes": bool},
    "unreadable": [str],
}
NESTED = {"wire": WIRE_NESTED, "probe": PROBE_NESTED}

_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooDeep(Exception):
    pass


_DROP = object()      # a nested value of the wrong type


class _Cleaner:
    """Walks one event's values, repairing them and noting what was repaired."""

    def __init__(self):
        self.notes: list[str] = []

    def value(self, v, depth: int):
        t = type(v)
        if t is str:
            if _SURROGATE.search(v):
                self.notes.append("text with lone surrogates (replaced by U+FFFD)")
                return _SURROGATE.sub("\ufffd", v)
            return v
        if t is int:
            if MIN_INT <= v <= MAX_INT:
                return v
            self.notes.append("integers beyond 64 bits (clamped)")
            return max(MIN_INT, min(MAX_INT, v))
        if t is bool or v is None:
            return v
        if t is float:
            if math.isfinite(v):
                return v
            self.notes.append("non-finite numbers (dropped)")
            return None
        if depth >= MAX_DEPTH:
            raise _TooDeep
        if t is dict:
            return {self.value(k, depth) if type(k) is str else str(k): self.value(x, depth + 1)
                    for k, x in v.items()}
        if t is list:
            return [self.value(x, depth + 1) for x in v]
        self.notes.append("values of a type JSON has not (shown as text)")
        return self.value(str(v), depth)

    def event(self, ev: dict, depth: int) -> dict | None:
        """The repaired event, or None when a required key is missing or of the wrong type."""
        t = ev.get("time_ns")
        if type(t) is not int or not all(type(ev.get(k)) is str for k in REQUIRED_STR):
            return None
        if not MIN_TIME_NS <= t <= MAX_TIME_NS:
            self.notes.append("event times outside 1970..2262 (clamped)")
            ev["time_ns"] = max(MIN_TIME_NS, min(MAX_TIME_NS, t))
        out = {}
        for key, v in ev.items():
            v = self.value(v, depth + 1) if key != "evidence" else v
            if v is not None and not self._typed(key, v):
                self.notes.append(f"'{key}' of the wrong type (dropped)")   # a known key
                continue
            if key in TIME_KEYS and v is not None and not MIN_TIME_NS <= v <= MAX_TIME_NS:
                self.notes.append("event times outside 1970..2262 (clamped)")
                v = max(MIN_TIME_NS, min(MAX_TIME_NS, v))
            spec = NESTED.get(ev["layer"], {}).get(key)
            if spec is not None and v is not None:
                v = self._nested_or_drop(v, spec, key)
                if v is _DROP:
                    continue
            if key == "evidence" and v is not None:
                v = self._evidence(v, depth)
            elif key == "chain" and v is not None:
                v = [step for step in v if type(step) is str]
            out[key] = v
        if out["layer"] == "finding" and out.get("severity") not in (None, *SEVERITIES):
            self.notes.append("unknown finding severities (dropped)")
            del out["severity"]
        return out

    def _nested(self, v, spec, path: str):
        """`v` held to `spec` (see NESTED): what is of another type is dropped, by path."""
        if isinstance(spec, dict):
            out = {}
            for k, x in v.items():
                if k in spec and x is not None:
                    x = self._nested_or_drop(x, spec[k], f"{path}.{k}")
                    if x is _DROP:
                        continue
                out[k] = x
            return out
        if isinstance(spec, list):
            kept = [x for x in (self._nested_or_drop(i, spec[0], f"{path}[]") for i in v)
                    if x is not _DROP]
            return kept
        return v

    def _nested_or_drop(self, x, spec, path: str):
        want = dict if isinstance(spec, dict) else list if isinstance(spec, list) else spec
        if type(x) is not want and not (isinstance(want, tuple) and type(x) in want):
            self.notes.append(f"'{path}' of the wrong type (dropped)")
            return _DROP
        return self._nested(x, spec, path) if isinstance(spec, (dict, list)) else x

    @staticmethod
    def _typed(key: str, v) -> bool:
        if key in STR_KEYS:
            return type(v) is str
        if key in INT_KEYS or key in TIME_KEYS:
            return type(v) is int
        if key in DICT_KEYS:
            return type(v) is dict
        if key in BOOL_KEYS:
            return type(v) is bool
        if key in UNION_KEYS:
            return type(v) in UNION_KEYS[key]
        if key in ("evidence", "chain"):
            return type(v) is list
        return True

    def _evidence(self, items: list, depth: int) -> list[dict]:
        kept = []
        for item in items[:MAX_EVIDENCE]:
            e = self.event(dict(item), depth + 1) if type(item) is dict else None
            if e is None:
                self.notes.append("evidence entries that are not events (dropped)")
            else:
                kept.append(e)
        if len(items) > MAX_EVIDENCE:
            self.notes.append(f"evidence beyond {MAX_EVIDENCE} entries (dropped)")
        return kept


def clean_events(events, diag: Diagnostics, where_key: str = "probe") -> list[dict]:
    """`clean_event` over a batch a producer handed over (a probe session's poll): the events
    that hold, each named in `diag` by its `where_key` value when one is dropped."""
    kept = []
    for ev in events:
        where = str(ev.get(where_key, "")) if isinstance(ev, dict) else ""
        ev = clean_event(ev, diag, where)
        if ev is not None:
            kept.append(ev)
    return kept


def clean_event(ev, diag: Diagnostics, where: str = "") -> dict | None:
    """The event made trustworthy, or None (counted in `diag`) when it cannot be."""
    if type(ev) is not dict:
        diag.skip("line that is not a JSON object", where)
        return None
    cleaner = _Cleaner()
    try:
        out = cleaner.event(ev, 0)
    except _TooDeep:
        diag.skip(f"event nested more than {MAX_DEPTH} deep", where)
        return None
    except RecursionError:
        diag.skip("event nested too deep", where)
        return None
    if out is None:
        diag.skip("event without time_ns/layer/kind/source of their types", where)
        return None
    for note in dict.fromkeys(cleaner.notes):
        diag.skip(note, where)
    return out
