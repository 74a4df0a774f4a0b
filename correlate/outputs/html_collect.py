"""What the HTML report keeps from a stream of events, bounded in count and in bytes.

Timeline rows: the first events and the last ones (the end of an incident matters as much as
its start), every finding, every event a finding points at (from the finding's own copy of
its evidence), and error replies; each part has a cap in rows and in bytes of the page's
escaped JSON, so the page stays a few MB whatever the capture. Each row is serialised once
when kept; only the serialised text is held. Everything else is counted: tallies, the folded
table (html_fold), the profile's sketches and the charts' buckets (chart_data).
"""
from __future__ import annotations

import json
import re
from collections import Counter, deque

from ..profile import Profile, reply_error
from .chart_data import ChartData
from .html_fold import EventFold
from .terminal import format_event

MAX_EVENTS = 6_000           # timeline rows in one page: first half, last half
MAX_FINDINGS = 2_000
MAX_HOSTS = 1_000            # hosts and inputs named in the header and the host selector
MAX_DETAIL_CHARS = 1_200     # the expandable JSON of one event
MAX_TEXT_CHARS = 4_000       # explanation / remedy shown for a finding
MAX_ADDED_ROWS = 200         # evidence rows one finding may bring back past the cap
# Bytes of escaped row JSON per part of the timeline (the page's bulk)
HEAD_BYTES = TAIL_BYTES = 800_000
PINNED_BYTES = 500_000       # findings and their evidence
ERROR_BYTES = 200_000        # error replies
_KEY_FIELDS = ("time_ns", "layer", "kind", "source", "host", "conn", "xid", "frame", "pid", "tid",
               "function", "log_line")


def event_key(ev: dict) -> tuple:
    """What identifies an event across copies (a finding's evidence is a copy)."""
    return tuple(str(ev.get(k)) for k in _KEY_FIELDS)


def script_json(obj) -> str:
    """JSON that is safe inside <script>: it cannot close the element or break a JS string."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# Control and bidi characters, and lone surrogates (which cannot be written as UTF-8).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def cut(text, limit: int = MAX_TEXT_CHARS) -> str:
    """Bounded text with control and bidi characters shown as escapes (newlines kept)."""
    s = "" if text is None else str(text)
    s = s if len(s) <= limit else s[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", s)


def summary(ev: dict) -> str:
    """The terminal's one-line description, without its time/layer/kind columns."""
    try:
        parts = format_event(ev).split(None, 3)
        return parts[3] if len(parts) == 4 else ""
    except Exception:   # a malformed event still gets a row
        return str({k: ev.get(k) for k in ("kind", "source")})


def _detail(ev: dict) -> str:
    text = json.dumps({k: v for k, v in ev.items() if k != "evidence"}, separators=(",", ":"),
                      default=str, ensure_ascii=True)
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def make_row(ev: dict, t: int, layer: str, clock) -> list:
    """[time, key, escaped JSON without id and t, size]: what the page needs of one event."""
    text = script_json({"layer": layer, "kind": cut(ev.get("kind", "?"), 200),
                        "host": cut(ev.get("host") or "", 200), "source": cut(ev.get("source", ""), 200),
                        "sev": cut(ev.get("severity") or "", 40), "text": cut(summary(ev), 2000),
                        "detail": _detail(ev), "time": clock(t)})
    return [t, event_key(ev), text[1:], len(text) + 20]


class _Part:
    """Rows under a cap in count and bytes."""

    def __init__(self, rows: int, size: int):
        self.rows, self.size = rows, size
        self.items: list = []
        self.bytes = 0

    def fits(self, row: list) -> bool:
        return len(self.items) < self.rows and self.bytes + row[3] <= self.size

    def add(self, row: list) -> None:
        self.items.append(row)
        self.bytes += row[3]


class Collector:
    def __init__(self, max_events: int, clock):
        self.max_events, self.clock = max_events, clock
        self.head = _Part(max_events - max_events // 2, HEAD_BYTES)
        self.tail: deque[list] = deque()
        self.tail_rows, self.tail_bytes = max_events // 2, 0
        self.pinned = _Part(max(max_events // 2, MAX_ADDED_ROWS), PINNED_BYTES)
        self.error_rows = _Part(max(max_events // 6, 1), ERROR_BYTES)
        self.keys: set[tuple] = set()
        self.findings: list[dict] = []
        self.errors: list[dict] = []      # detectors that failed: a report must not look healthy
        self.updates: dict[str, dict] = {}
        self.seen = self.bad = self.findings_left_out = self.pins_left_out = 0
        self.dropped_span: list[int] = []  # first and last time of the events left out
        self.layers: Counter[str] = Counter()
        self.hosts: set[str] = set()
        self.sources: set[str] = set()
        self.first: int | None = None
        self.last: int | None = None
        self.rows: list[list] = []
        self.index: dict[tuple, str] = {}
        self.profile = Profile()      # bounded: sketches, not the latencies
        self.charts = ChartData(self.profile.topology)
        self.fold = EventFold()

    @property
    def left_out(self) -> int:
        kept = len(self.head.items) + len(self.pinned.items) + len(self.error_rows.items) + len(self.tail)
        return max(0, self.seen - kept) + self.bad

    def add(self, ev: dict) -> None:
        self.profile.observe(ev)
        self.charts.observe(ev)
        t = ev.get("time_ns")
        if not isinstance(t, int):
            self.bad += 1
            return
        self.seen += 1
        self.fold.add(ev, t)
        if t > 0:   # time 0: an event no input timed, which must not stretch the range to 1970
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)
        layer = cut(ev.get("layer", "?"), 40)
        kind = ev.get("kind")
        if layer != "finding":
            self.layers[layer] += 1
            if len(self.sources) < MAX_HOSTS:
                self.sources.add(cut(ev.get("source", "?"), 200))    # the inputs (detectors are not)
        if ev.get("host") and len(self.hosts) < MAX_HOSTS:
            self.hosts.add(cut(ev["host"], 200))
        if kind == "finding.update" and ev.get("id") and (len(self.updates) < MAX_FINDINGS
                                                          or str(ev["id"]) in self.updates):
            self.updates[str(ev["id"])] = ev
            self.charts.finding(ev)
            self._pin_evidence(ev)
        if layer == "finding" and kind == "finding":
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append(ev)
                self.charts.finding(ev)
                self._pin_evidence(ev)
            else:
                self.findings_left_out += 1
        if kind == "detector.error" and len(self.errors) < MAX_FINDINGS:
            self.errors.append(ev)
        self._keep(make_row(ev, t, layer, self.clock), layer == "finding",
                   kind == "rpc.reply" and reply_error(ev) is not None)

    def _keep(self, row: list, pinned: bool, error: bool) -> None:
        if self.head.fits(row):
            self.head.add(row)
        elif pinned and self.pinned.fits(row):
            self.pinned.add(row)
        elif error and self.error_rows.fits(row):
            self.error_rows.add(row)
        else:
            self.tail.append(row)
            self.tail_bytes += row[3]
            while self.tail and (len(self.tail) > self.tail_rows or self.tail_bytes > TAIL_BYTES):
                gone = self.tail.popleft()
                self.tail_bytes -= gone[3]
                self._dropped_at(gone[0])
            return
        self.keys.add(row[1])

    def _dropped_at(self, t: int) -> None:
        span = self.dropped_span
        self.dropped_span = [min(span[0], t), max(span[1], t)] if span else [t, t]

    def _pin_evidence(self, finding: dict) -> None:
        """Evidence no longer in the page (or bound to leave the tail) is kept as a row, from
        the finding's own copy of it, while the pinned part has room."""
        evidence = finding.get("evidence")
        evidence = [e for e in (evidence if isinstance(evidence, list) else [])[:MAX_ADDED_ROWS]
                    if isinstance(e, dict) and isinstance(e.get("time_ns"), int)]
        wanted = {event_key(e) for e in evidence} - self.keys
        if not wanted:
            return
        moved = [r for r in self.tail if r[1] in wanted]
        if moved:
            self.tail = deque(r for r in self.tail if r[1] not in wanted)
            self.tail_bytes = sum(r[3] for r in self.tail)
        rows = moved + [make_row(e, e["time_ns"], cut(e.get("layer", "?"), 40), self.clock)
                        for e in evidence if event_key(e) in wanted - {r[1] for r in moved}]
        for row in rows:
            if row[1] in self.keys:
                continue
            if self.pinned.fits(row):
                self.pinned.add(row)
                self.keys.add(row[1])
            else:
                self.pins_left_out += 1
                if row in moved:
                    self._dropped_at(row[0])

    def finish(self) -> None:
        """Rows in time order, with the ids that evidence links point at."""
        self.rows = sorted([*self.head.items, *self.pinned.items, *self.error_rows.items, *self.tail],
                           key=lambda r: r[0])
        for i, row in enumerate(self.rows, 1):
            self.index.setdefault(row[1], f"e{i}")

    def explanation(self, finding: dict):
        """The latest word: a folded finding's update may explain it better (a final count)."""
        update = self.updates.get(str(finding.get("id"))) or {}
        return update.get("explanation") or finding.get("explanation")

    def evidence(self, finding: dict) -> list:
        """A folded finding's evidence: its first occurrence's, then what its repeats added."""
        update = self.updates.get(str(finding.get("id"))) or {}
        first, more = finding.get("evidence"), update.get("evidence")
        return (list(first) if isinstance(first, list) else []) + (list(more) if isinstance(more, list) else [])
