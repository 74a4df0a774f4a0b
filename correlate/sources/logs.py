"""Gluster's own log files (client, brick, glusterd, cli, cmd_history) as `log` events.

The line formats are those written by libglusterfs/src/logging.c:

    [TS] L [MSGID: N] [file.c:LINE:function] G-domain: message[ [strerror]]
    [TS] L [file.c:LINE:function] G-domain: message                 (traditional format)
    [TS] L [file.c:LINE:function] (-->lib(+0x..) [0x..] ... ) G-domain: message   (with call stack)
    The message "L [MSGID: N] [file.c:LINE:function] G-domain: message" repeated K times
        between [TS] and [TS]
    [TS]  : volume start vol : SUCCESS                               (cmd_history.log)

TS is `YYYY-MM-DD HH:MM:SS.uuuuuu`, followed by ` +0000` in current releases (older releases
wrote no offset and used UTC). Structured messages (gf_smsg) end in `[{key=value}, ...]`.
Lines that do not start an entry (the "Final graph:" volfile dump, crash reports) are
continuation lines of the entry before them. Nothing here raises on bad input: damaged
lines are counted in the Diagnostics and skipped.
"""
from __future__ import annotations

import calendar
import io
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from ..diagnostics import Diagnostics
from ..events import make_event
from ..validate import MAX_TIME_NS, MIN_TIME_NS, clean_event

MAX_LINE_BYTES = 64 * 1024            # a longer line is cut here (and counted)
MAX_CONTINUATION_LINES = 400          # a volfile dump of a big volume fits; the rest is counted
MAX_CONTINUATION_CHARS = 128 * 1024

LEVEL_NAMES = {
    " ": "NONE", "M": "EMERGENCY", "A": "ALERT", "C": "CRITICAL", "E": "ERROR",
    "W": "WARNING", "N": "NOTICE", "I": "INFO", "D": "DEBUG", "T": "TRACE",
}

_TS = r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?: ([+-])(\d\d)(\d\d))?"
_TS_PLAIN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?: [+-]\d{4})?"
_TS_RE = re.compile(_TS)
# What follows the level letter, shared by plain lines and "repeated" lines.
# Numbers are bounded: a line of thousands of digits is damage, not a line number.
_HEAD = (r"(?:\[MSGID: (?P<msgid>\d{1,18})\] )?"
         r"\[(?P<file>[^\]:]*):(?P<line>\d{1,18}):(?P<function>[^\]]*)\] "
         r"(?:\((?P<callstack>-->.{0,4096}?)\) )?"           # logging.c: GF_LOG_BACKTRACE_SIZE
         r"(?P<graph>-?\d{1,9})-(?P<xlator>.{0,512}?): ")
_ENTRY_RE = re.compile(r"\[(?P<ts>" + _TS_PLAIN + r")\] (?P<level>[ MACEWNIDT]) " + _HEAD
                       + r"(?P<message>.*)\Z", re.S)
_BARE_ENTRY_RE = re.compile(r"\[(?P<ts>" + _TS_PLAIN + r")\] (?P<rest>.*)\Z", re.S)
_REPEAT_RE = re.compile(
    r'The message "(?P<level>[ MACEWNIDT]) ' + _HEAD + r'(?P<message>.*)" repeated (?P<count>\d{1,18}) '
    r"times between \[(?P<first>" + _TS_PLAIN + r")\] and \[(?P<last>" + _TS_PLAIN + r")\]\s*\Z",
    re.S)
_LOOKS_LIKE_ENTRY_RE = re.compile(r"\[\d{4}-\d\d-\d\d[ T]|The message \"")
_FIELDS_RE = re.compile(r"\s\[\{(?P<body>.*)\}\]\Z", re.S)
_STRERROR_RE = re.compile(r"\s\[(?P<err>[^\[\]{}]+)\]\Z")
# Sniffing: the start of an entry as logging.c writes it.
_SNIFF_RE = re.compile(r"(?:\[" + _TS_PLAIN + r"\] (?:[ MACEWNIDT] \[| : )|The message \"[ MACEWNIDT] \[)")


def looks_like_gluster_log(first_bytes: bytes) -> bool:
    """True if the first bytes of an input look like a Gluster log (for the input loader)."""
    text = first_bytes[:8192].decode("utf-8", "replace")
    for line in text.splitlines()[:20]:
        if _SNIFF_RE.match(line):
            return True
    return False


def parse_timestamp(text: str) -> int | None:
    """`2024-01-01 10:00:00.123456 +0000` (offset optional: UTC) -> ns since the epoch."""
    m = _TS_RE.fullmatch(text.strip())
    if not m:
        return None
    year, mon, day, hh, mm, ss, frac, sign, oh, om = m.groups()
    try:
        if not (1 <= int(mon) <= 12 and 1 <= int(day) <= 31 and int(hh) < 24
                and int(mm) < 60 and int(ss) <= 60):
            return None
        secs = calendar.timegm((int(year), int(mon), int(day), int(hh), int(mm), int(ss), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if sign:
        offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1)
        secs -= offset
    nanos = int((frac or "0").ljust(9, "0")) if frac else 0
    time_ns = secs * 1_000_000_000 + nanos
    return time_ns if MIN_TIME_NS <= time_ns <= MAX_TIME_NS else None   # a date that can be shown


def split_fields(message: str) -> tuple[str, dict[str, str], str | None]:
    """Split `text [{k=v}, {k=v}] [strerror]` into (text, fields, strerror).

    A key seen twice (`{errno=Operation not permitted}, {errno=1}`) keeps its first value;
    later ones are stored as `errno#2`, ... Items without `=` are stored under `text`."""
    strerror = None
    m = _STRERROR_RE.search(message)
    if m and not message.endswith("}]"):
        strerror = m.group("err")
        message = message[:m.start()]
    fields: dict[str, str] = {}
    if message.endswith(" []"):          # a structured message with no fields
        return message[:-3].rstrip(), fields, strerror
    m = _FIELDS_RE.search(message)
    if m:
        for item in m.group("body").split("}, {"):
            key, sep, value = item.partition("=")
            if not sep:
                key, value = "text", item
            key = key.strip()
            name, n = key, 1
            while name in fields:
                n += 1
                name = f"{key}#{n}"
            fields[name] = value
        message = message[:m.start()]
    return message.rstrip(), fields, strerror


def _open(fileobj_or_path) -> tuple[BinaryIO, bool]:
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        return open(fileobj_or_path, "rb"), True
    if isinstance(fileobj_or_path, io.TextIOBase):
        return fileobj_or_path.buffer, False   # type: ignore[attr-defined]
    return fileobj_or_path, False


def _lines(f: BinaryIO, diag: Diagnostics) -> Iterator[tuple[int, str]]:
    """Numbered text lines, each at most MAX_LINE_BYTES (the rest of a longer one is skipped)."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            diag.skip("log line longer than %d bytes (cut)" % MAX_LINE_BYTES, f"line {number}")
            while True:   # drop the rest of this line without holding it
                more = f.readline(MAX_LINE_BYTES)
                if not more or more.endswith(b"\n"):
                    break
            raw = raw[:MAX_LINE_BYTES]
        yield number, raw.decode("utf-8", "replace").rstrip("\r\n")


class _Entry:
    """An entry being collected: its event and its continuation lines."""

    def __init__(self, event: dict):
        self.event = event
        self.extra: list[str] = []
        self.extra_chars = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        if len(self.extra) >= MAX_CONTINUATION_LINES or self.extra_chars + len(line) > MAX_CONTINUATION_CHARS:
            self.dropped += 1
            return
        self.extra.append(line)
        self.extra_chars += len(line) + 1

    def finish(self, diag: Diagnostics) -> dict:
        if self.extra:
            self.event["continuation"] = "\n".join(self.extra)
        if self.dropped:
            self.event["continuation_dropped"] = self.dropped
            diag.skip("continuation lines beyond the limit", f"line {self.event['log_line']}")
        return self.event


def _event_from_match(m: re.Match, time_ns: int, source: str, host: str | None, number: int) -> dict:
    level = m.group("level")
    text, fields, strerror = split_fields(m.group("message").rstrip())
    graph, xlator = m.group("graph"), m.group("xlator")
    ev = make_event(
        time_ns, "log", "log.message", source,
        level=level, level_name=LEVEL_NAMES[level],
        msgid=int(m.group("msgid")) if m.group("msgid") else None,
        file=m.group("file"), line=int(m.group("line")), function=m.group("function"),
        domain=f"{graph}-{xlator}", graph_id=int(graph), xlator=xlator,
        message=text, fields=fields, log_line=number)
    if strerror:
        ev["strerror"] = strerror
    if m.group("callstack"):
        ev["callstack"] = m.group("callstack").strip()
    if host:
        ev["host"] = host
    return ev


def _parse_entry(line: str, number: int, source: str, host: str | None) -> dict | None:
    """An event for a line that starts an entry, or None if the line starts none."""
    if line.startswith("["):
        m = _ENTRY_RE.match(line)
        if m:
            t = parse_timestamp(m.group("ts"))
            if t is not None:
                return _event_from_match(m, t, source, host, number)
            return None
        m = _BARE_ENTRY_RE.match(line)
        if m and (t := parse_timestamp(m.group("ts"))) is not None:
            # cmd_history.log (`[TS]  : volume start vol : SUCCESS`) and other level-less lines.
            ev = make_event(t, "log", "log.message", source, level=None, level_name=None,
                            msgid=None, file=None, line=None, function=None, domain=None,
                            message=m.group("rest").strip(" :"), fields={}, log_line=number)
            if host:
                ev["host"] = host
            return ev
        return None
    if line.startswith("The message \""):
        m = _REPEAT_RE.match(line)
        if m:
            first, last = parse_timestamp(m.group("first")), parse_timestamp(m.group("last"))
            if first is None or last is None:
                return None
            # Placed at the last occurrence; the first one was logged on its own line already.
            ev = _event_from_match(m, last, source, host, number)
            ev["repeated"] = int(m.group("count"))
            ev["first_time_ns"] = first
            return ev
    return None


def read_gluster_log(fileobj_or_path, source: str, host: str | None = None,
                     diag: Diagnostics | None = None) -> Iterator[dict]:
    """Yield one `log.message` event per log entry, in file order.

    `fileobj_or_path` is a path or a binary (or text) file object. Damaged or foreign
    lines are counted in `diag` (one is made if none is given) and skipped."""
    diag = diag if diag is not None else Diagnostics(source)
    f, owned = _open(fileobj_or_path)
    current: _Entry | None = None
    try:
        for number, line in _lines(f, diag):
            ev = _parse_entry(line, number, source, host)
            if ev is not None:
                if current is not None:
                    yield from _checked(current.finish(diag), diag)
                current = _Entry(ev)
            elif _LOOKS_LIKE_ENTRY_RE.match(line):
                diag.skip("unparseable log entry", f"line {number}")
            elif current is not None:
                current.add(line)
            elif line.strip():
                diag.skip("log line outside any entry", f"line {number}")
        if current is not None:
            yield from _checked(current.finish(diag), diag)
    finally:
        if owned:
            f.close()


def _checked(ev: dict, diag: Diagnostics) -> Iterator[dict]:
    """The same check as a saved timeline's events pass (correlate.validate)."""
    ev = clean_event(ev, diag, f"line {ev['log_line']}")
    if ev is not None:
        yield ev
