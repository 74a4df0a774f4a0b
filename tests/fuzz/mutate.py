"""Mutations of real inputs: bytes for any input, structure-aware ones for timelines and logs.

A mutation is a tuple `(operation, a, b)` of small integers that the operation maps onto
positions and choices, so hypothesis can draw a list of them and shrink a failing list to
the few that matter. The hostile values are those users' files have been seen to carry (or
that break a naive reader): numbers beyond 64 bits and beyond a float, wrong JSON types,
escape sequences, bidi overrides, lone surrogates, deep nesting, dates far from today.
"""
from __future__ import annotations

import gzip
import json
import re

INTERESTING_U32 = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                   0xFFFFFFFE, 24, 28, 32, 0x0A0D0D0A, 0x1A2B3C4D, 0xA1B2C3D4, 0xA1B2CD34)
INTERESTING_BYTES = b"\x00\x01\x1b\x7f\x80\x9b\xff\n\r\t[]{}\"\\:"
ESCAPES = ("\x1b]0;title\x07", "\x1b[2J\x1b[31m", "\x9b31m", "\r\x08\x00", "\u202e\u2066",
           "\u2028\u2029", "\ud800", "\udfff", "\ud83d")
HOSTILE_VALUES = (
    10 ** 30, -(10 ** 30), 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 1e30, -1e300, 0.5, -1, 0, True, False,
    None, "", "x" * 70_000, [], {}, [1, "a", None], {"a": {"b": [1]}}, "\x1b]0;owned\x07",
    "\ud800", "a\udfffb", "9" * 4400, "2024-01-01", "rpc.call", "finding", ["x"],
    {"time_ns": 1, "layer": "wire", "kind": "rpc.call", "source": "s"})
KINDS = ("rpc.call", "rpc.reply", "tcp.connect", "tcp.refused", "tcp.timeout", "tcp.close",
         "probe.call", "probe.return", "probe.lost", "log.message", "finding", "finding.update",
         "detector.error", "timeline.header", "unknown.kind")
LAYERS = ("wire", "probe", "log", "finding", "other")
KEYS = ("time_ns", "layer", "kind", "source", "host", "src", "dst", "conn", "xid", "frame",
        "program", "procedure", "procedure_num", "reply_status", "accept_status", "reject_status",
        "auth_status", "op_ret", "op_errno", "errno_name", "latency_ns", "call_time_ns", "args",
        "result", "cred", "pid", "tid", "comm", "function", "retval", "level", "domain", "message",
        "fields", "severity", "detector", "title", "explanation", "remedy", "evidence", "key",
        "count", "id", "chain", "last_time_ns", "waited_ns", "reason", "by", "mismatch")
LOG_DATES = ("9999-12-31 23:59:59.999999 -2359", "0000-01-01 00:00:00", "1969-12-31 23:59:59 +0000",
             "2262-04-11 23:47:16.854775 +0000", "2024-02-30 25:61:61", "2024-01-01 00:00:00.1234567890")


def _pick(seq, n: int):
    return seq[n % len(seq)]


def _span(data: bytes, a: int, b: int) -> tuple[int, int]:
    if not data:
        return 0, 0
    start = a % len(data)
    return start, min(len(data), start + 1 + b % 64)


# -- byte mutations ---------------------------------------------------------------------------

def _flip(data: bytes, a: int, b: int, other: bytes) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    buf[a % len(buf)] ^= 1 << (b % 8)
    return bytes(buf)


def _set_byte(data, a, b, other):
    if not data:
        return data
    buf = bytearray(data)
    buf[a % len(buf)] = _pick(INTERESTING_BYTES, b)
    return bytes(buf)


def _set_u32(data, a, b, other):
    if len(data) < 4:
        return data
    pos = (a % (len(data) - 3)) & ~3 if b & 1 else a % (len(data) - 3)
    value = _pick(INTERESTING_U32, b >> 1)
    order = "big" if b & 0x100 else "little"
    return data[:pos] + value.to_bytes(4, order) + data[pos + 4:]


def _delete(data, a, b, other):
    s, e = _span(data, a, b)
    return data[:s] + data[e:]


def _duplicate(data, a, b, other):
    s, e = _span(data, a, b)
    return data[:e] + data[s:e] + data[e:]


def _insert(data, a, b, other):
    pos = a % (len(data) + 1)
    return data[:pos] + bytes(_pick(INTERESTING_BYTES, b + i) for i in range(1 + b % 16)) + data[pos:]


def _truncate(data, a, b, other):
    return data[:a % (len(data) + 1)]


def _splice(data, a, b, other):
    """The head of this input and the tail of another real one."""
    cut = a % (len(data) + 1)
    return data[:cut] + other[b % (len(other) + 1):]


def _gzip(data, a, b, other):
    """Compressed as users send captures and logs; sometimes cut short or with a flipped byte."""
    z = gzip.compress(data, compresslevel=1)
    if b % 3 == 1:
        return z[:10 + a % max(1, len(z) - 10)]
    if b % 3 == 2:
        return _flip(z, 10 + a % max(1, len(z) - 10), b, other)
    return z


BYTE_OPS = (_flip, _set_byte, _set_u32, _delete, _duplicate, _insert, _truncate, _splice, _gzip)


# -- timeline mutations -----------------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _event_at(lines: list[bytes], a: int) -> tuple[int, dict | None]:
    i = a % len(lines)
    try:
        ev = json.loads(lines[i])
    except (ValueError, RecursionError):
        return i, None
    return i, ev if isinstance(ev, dict) else None


def _target(ev: dict, b: int) -> tuple[dict, str]:
    """A dict inside the event (itself, its args/result/cred, an evidence event) and a key."""
    holders = [ev] + [v for v in ev.values() if isinstance(v, dict)]
    holders += [e for e in ev.get("evidence") or [] if isinstance(e, dict)]
    holder = _pick(holders, b)
    keys = list(holder) + list(KEYS)
    return holder, _pick(keys, b >> 4)


def _dump(ev) -> bytes:
    return json.dumps(ev, allow_nan=True).encode()


def _json_value(data, a, b, other):
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None:
        return data
    holder, key = _target(ev, b)
    holder[key] = _pick(HOSTILE_VALUES, b >> 8)
    lines[i] = _dump(ev)
    return b"\n".join(lines)


def _json_text(data, a, b, other):
    """An escape sequence, bidi override or lone surrogate inside a string value."""
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None:
        return data
    holder, key = _target(ev, b)
    old = holder.get(key)
    holder[key] = (old if isinstance(old, str) else str(old)) + _pick(ESCAPES, b >> 8)
    lines[i] = _dump(ev)
    return b"\n".join(lines)


def _json_kind(data, a, b, other):
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None:
        return data
    ev["kind"] = _pick(KINDS, b)
    ev["layer"] = _pick(LAYERS, b >> 4) if b & 0x100 else ev.get("layer")
    lines[i] = _dump(ev)
    return b"\n".join(lines)


def _json_drop(data, a, b, other):
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None or not ev:
        return data
    holder, key = _target(ev, b)
    holder.pop(key, None)
    lines[i] = _dump(ev)
    return b"\n".join(lines)


def _json_deep(data, a, b, other):
    depth = (10, 30, 100, 1000, 2000, 5000)[b % 6]
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None or b & 0x10:
        deep = ("[" * depth + "]" * depth) if b & 0x20 else ('{"a":' * depth + "1" + "}" * depth)
        lines.insert(a % (len(lines) + 1), deep.encode())
        return b"\n".join(lines)
    holder, key = _target(ev, b)
    holder[key] = "DEEP"
    text = _dump(ev).replace(b'"DEEP"', b'{"x":' * depth + b"1" + b"}" * depth, 1)
    lines[i] = text
    return b"\n".join(lines)


def _json_reorder(data, a, b, other):
    lines = _lines(data)
    i, j = a % len(lines), b % len(lines)
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _json_number(data, a, b, other):
    """A number literal json reads but Python finds awkward (huge, exponent, NaN)."""
    literal = _pick((b"1" + b"0" * 4400, b"1e400", b"NaN", b"-Infinity", b"1e30", b"-0", b"1" + b"0" * 30), b)
    lines = _lines(data)
    i = a % len(lines)
    lines[i] = re.sub(rb":(-?\d+)", b":" + literal, lines[i], count=1 + b % 3)
    return b"\n".join(lines)


# A value of each JSON type, and for each type the values of other types that replace it
WRONG_TYPES = {str: (1, -1, 2 ** 64, 1.5, [], ["x"], {}, {"a": 1}, None, True),
               int: ("1", "x", [1], {}, None, 1e300, True, 0.5),
               float: ("1.5", [], {}, None),
               bool: ("true", 1, [], {}),
               list: ("x", 1, {}, [[[]]], [None], [{"a": []}], None),
               dict: ("x", 1, [], [{}], None, True)}


def _paths(value, prefix: tuple = (), depth: int = 0):
    """Every (container, key, path) inside a decoded event, depth first (lists by index)."""
    if depth > 12:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for k, v in items:
        yield value, k, prefix + (k,)
        yield from _paths(v, prefix + (k,), depth + 1)


def _json_typed_path(data, a, b, other):
    """The systematic sweep as a mutation: a value anywhere in an event (args.flock.len,
    result.brick_sets[0].bricks, an evidence event's cred.pid) replaced by one of another
    JSON type."""
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None:
        return data
    places = list(_paths(ev))
    if not places:
        return data
    holder, key, _path = _pick(places, b)
    old = holder[key]
    holder[key] = _pick(WRONG_TYPES.get(type(old), HOSTILE_VALUES), b >> 12)
    lines[i] = _dump(ev)
    return b"\n".join(lines)


def _schema_paths(spec, prefix: tuple = ()):
    """Every path the schema types (correlate/validate.py NESTED): learnt from the schema
    itself, so a path added there is fuzzed without touching the harness."""
    if isinstance(spec, dict):
        for k, sub in spec.items():
            yield prefix + (k,), sub
            yield from _schema_paths(sub, prefix + (k,))
    elif isinstance(spec, list):
        yield from _schema_paths(spec[0], prefix + (0,))


def _json_schema_path(data, a, b, other):
    """A path the schema names, created in an event of its layer if absent, holding a value
    of the wrong type (a GETSPEC reply with brick_sets[0].bricks a string)."""
    from correlate.validate import NESTED
    lines = _lines(data)
    i, ev = _event_at(lines, a)
    if ev is None or ev.get("layer") not in NESTED:
        return data
    paths = list(_schema_paths(NESTED[ev["layer"]]))
    path, spec = _pick(paths, b)
    node = ev
    for k, nxt in zip(path[:-1], path[1:]):
        if isinstance(k, int):
            if not isinstance(node, list) or not node:
                return data
            node = node[0]
            continue
        if not isinstance(node, dict):
            return data
        node = node.setdefault(k, [] if isinstance(nxt, int) else {})
        if isinstance(nxt, int) and isinstance(node, list) and not node:
            node.append({})
    want = dict if isinstance(spec, dict) else list if isinstance(spec, list) else spec
    wrong = WRONG_TYPES.get(want if isinstance(want, type) else str, HOSTILE_VALUES)
    last = path[-1]
    if isinstance(last, int):
        if isinstance(node, list):
            node[:1] = [_pick(wrong, b >> 8)]
    elif isinstance(node, dict):
        node[last] = _pick(wrong, b >> 8)
    lines[i] = _dump(ev)
    return b"\n".join(lines)


TIMELINE_OPS = (_json_value, _json_text, _json_kind, _json_drop, _json_deep, _json_reorder,
                _json_number, _json_typed_path, _json_schema_path)


# -- log mutations ----------------------------------------------------------------------------

def _log_line(data: bytes, a: int) -> tuple[list[bytes], int]:
    lines = _lines(data)
    return lines, a % len(lines)


def _log_numbers(data, a, b, other):
    lines, i = _log_line(data, a)
    digits = _pick((b"9" * 5000, b"9" * 19, b"18446744073709551616", b"0", b"-1"), b)
    lines[i] = re.sub(rb"(?<=[:\[ ])\d+(?=[\]: ])", lambda m: digits, lines[i], count=1 + b % 4)
    return b"\n".join(lines)


def _log_date(data, a, b, other):
    lines, i = _log_line(data, a)
    lines[i] = re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?( [+-]\d{4})?",
                      _pick(LOG_DATES, b).encode(), lines[i], count=1 + b % 2)
    return b"\n".join(lines)


def _log_text(data, a, b, other):
    lines, i = _log_line(data, a)
    esc = _pick(ESCAPES, b).encode("utf-8", "surrogatepass")
    pos = a % (len(lines[i]) + 1)
    lines[i] = lines[i][:pos] + esc + lines[i][pos:]
    return b"\n".join(lines)


def _log_repeat(data, a, b, other):
    """A "repeated N times" line built from a real entry, with hostile parts."""
    lines, i = _log_line(data, a)
    m = re.match(rb"\[([^\]]*)\] (.*)", lines[i])
    if not m:
        return data
    count = _pick((b"2", b"9" * 5000, b"0", b"99999999999999999999"), b)
    last = _pick((m.group(1), b"9999-12-31 23:59:59 -2359"), b >> 2)
    lines.insert(i + 1, b'The message "' + m.group(2) + b'" repeated ' + count
                 + b" times between [" + m.group(1) + b"] and [" + last + b"]")
    return b"\n".join(lines)


def _log_fields(data, a, b, other):
    lines, i = _log_line(data, a)
    tail = _pick((b" [{a=b}, {a=c}, {=}, {}]", b" [{" + b"x" * 70000 + b"}]", b" []",
                  b" [\x1b[31m]", b" [{k=\xff\xfe}]"), b)
    lines[i] = lines[i].rstrip() + tail
    return b"\n".join(lines)


LOG_OPS = (_log_numbers, _log_date, _log_text, _log_repeat, _log_fields)

OPS = {"capture": BYTE_OPS, "timeline": TIMELINE_OPS + BYTE_OPS, "log": LOG_OPS + BYTE_OPS}


def mutate(kind: str, data: bytes, mutations: list[tuple[int, int, int]], other: bytes) -> bytes:
    """Apply `mutations` (operation index, a, b) to `data`, a real input of `kind`."""
    ops = OPS[kind]
    for op, a, b in mutations:
        data = ops[op % len(ops)](data, a, b, other)
        if len(data) > 4 * 1024 * 1024:      # keep each input quick to run
            data = data[:4 * 1024 * 1024]
    return data
