"""A timeline as one self-contained HTML report (inline CSS and JS, nothing fetched).

Findings come first, each with its explanation, remedy and links to its evidence in the
timeline below. The timeline can be filtered by layer, host and text, and zoomed by dragging
over the overview strip. Findings are rendered in HTML (escaped with html.escape); timeline
rows are rendered by the page's script from JSON embedded with `<`, `>`, `&`, U+2028 and
U+2029 escaped, and inserted as text (never as markup). At most `max_events` events are kept
for the page (the first half, the last half, and every event a finding points at); the report
says how many were left out, and from when to when.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import re
from collections import Counter, deque
from collections.abc import Iterable
from importlib import resources

from ..profile import Profile
from .profile_html import CSS as PROFILE_CSS, profile_section
from .terminal import format_event

MAX_EVENTS = 50_000          # timeline rows in one page (a browser stays responsive)
MAX_FINDINGS = 2_000
MAX_DETAIL_CHARS = 2_000     # the expandable JSON of one event
MAX_TEXT_CHARS = 4_000       # explanation / remedy shown for a finding
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


def _utc(time_ns: int, with_date: bool = False) -> str:
    try:
        t = _dt.datetime.fromtimestamp(time_ns // 1_000_000_000, _dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):   # no date can hold it
        return f"@{_cut(time_ns, 40)}ns"
    frac = f"{time_ns % 1_000_000_000:09d}"
    return (f"{t:%Y-%m-%d %H:%M:%S}.{frac} UTC" if with_date else f"{t:%H:%M:%S}.{frac[:6]}")


def _summary(ev: dict) -> str:
    """The terminal's one-line description, without its time/layer/kind columns."""
    try:
        parts = format_event(ev).split(None, 3)
        return parts[3] if len(parts) == 4 else ""
    except Exception:   # a malformed event still gets a row
        return str({k: ev.get(k) for k in ("kind", "source")})


def _detail(ev: dict) -> str:
    text = json.dumps({k: v for k, v in ev.items() if k != "evidence"}, indent=1, default=str,
                      ensure_ascii=True)
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "\n..."


# Control and bidi characters, and lone surrogates (which cannot be written as UTF-8).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _cut(text, limit: int = MAX_TEXT_CHARS) -> str:
    """Bounded text with control and bidi characters shown as escapes (newlines kept)."""
    s = "" if text is None else str(text)
    s = s if len(s) <= limit else s[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                        else f"\\u{ord(m.group()):04x}", s)


class _Collector:
    """Keeps what the page needs from a stream: capped rows, findings, tallies.

    Past `max_events`, the page keeps the first half and the last half of the events (the
    end of an incident matters as much as its start), and every event a finding points at
    (from the finding's own copy of its evidence); the events in between are counted."""

    def __init__(self, max_events: int):
        self.max_events = max_events
        self.head: list[dict] = []
        self.tail: deque[dict] = deque(maxlen=max_events // 2)
        self.pinned: list[dict] = []      # evidence rows kept past the cap
        self.keys: set[tuple] = set()
        self.findings: list[dict] = []
        self.errors: list[dict] = []      # detectors that failed: a report must not look healthy
        self.updates: dict[str, dict] = {}
        self.seen = 0
        self.dropped_span: list[int] = []  # first and last time of the events left out
        self.bad = 0                       # events without a time
        self.findings_left_out = 0
        self.layers: Counter[str] = Counter()
        self.hosts: set[str] = set()
        self.sources: set[str] = set()
        self.first: int | None = None
        self.last: int | None = None
        self.rows: list[dict] = []
        self.index: dict[tuple, str] = {}
        self.profile = Profile()      # bounded: sketches, not the latencies

    @property
    def left_out(self) -> int:
        kept = len(self.head) + len(self.pinned) + len(self.tail)
        return max(0, self.seen - kept) + self.bad

    def add(self, ev: dict) -> None:
        self.profile.observe(ev)
        t = ev.get("time_ns")
        if not isinstance(t, int):
            self.bad += 1
            return
        self.seen += 1
        if t > 0:   # time 0: an event no input timed, which must not stretch the range to 1970
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)
        layer = _cut(ev.get("layer", "?"), 40)
        kind = ev.get("kind")
        if layer != "finding":
            self.layers[layer] += 1
            self.sources.add(_cut(ev.get("source", "?"), 200))    # the inputs (detectors are not)
        if ev.get("host"):
            self.hosts.add(_cut(ev["host"], 200))
        if kind == "finding.update" and ev.get("id"):
            self.updates[str(ev["id"])] = ev
            self._pin_evidence(ev)
        if layer == "finding" and kind == "finding":
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append(ev)
                self._pin_evidence(ev)
            else:
                self.findings_left_out += 1
        if kind == "detector.error" and len(self.errors) < MAX_FINDINGS:
            self.errors.append(ev)
        self._keep(_row(ev, t, layer), pinned=layer == "finding")

    def _keep(self, row: dict, pinned: bool = False) -> None:
        if len(self.head) < self.max_events - self.tail.maxlen:
            self.head.append(row)
            self.keys.add(row["key"])
        elif pinned:
            self.pinned.append(row)
            self.keys.add(row["key"])
        elif self.tail.maxlen:
            if len(self.tail) == self.tail.maxlen:
                self._dropped_at(self.tail[0]["t"])
            self.tail.append(row)
        else:
            self._dropped_at(row["t"])

    def _dropped_at(self, t: int) -> None:
        span = self.dropped_span
        self.dropped_span = [min(span[0], t), max(span[1], t)] if span else [t, t]

    def _pin_evidence(self, finding: dict) -> None:
        """Evidence no longer in the page (or bound to leave the tail) is kept as a row, from
        the finding's own copy of it."""
        evidence = [e for e in (finding.get("evidence") or [])[:MAX_ADDED_ROWS]
                    if isinstance(e, dict) and isinstance(e.get("time_ns"), int)]
        wanted = {event_key(e) for e in evidence} - self.keys
        if not wanted:
            return
        in_tail = [r for r in self.tail if r["key"] in wanted]
        if in_tail:
            self.tail = deque((r for r in self.tail if r["key"] not in wanted), maxlen=self.tail.maxlen)
        for row in in_tail:
            self.pinned.append(row)
            self.keys.add(row["key"])
        for ev in evidence:
            key = event_key(ev)
            if key not in self.keys:
                self.pinned.append(_row(ev, ev["time_ns"], _cut(ev.get("layer", "?"), 40)))
                self.keys.add(key)

    def finish(self) -> None:
        """Rows in time order, with the ids that evidence links point at."""
        rows = sorted([*self.head, *self.pinned, *self.tail], key=lambda r: r["t"])
        for i, row in enumerate(rows, 1):
            row["id"] = f"e{i}"
            self.index.setdefault(row["key"], row["id"])
        self.rows = rows

    def explanation(self, finding: dict):
        """The latest word: a folded finding's update may explain it better (a final count)."""
        update = self.updates.get(str(finding.get("id"))) or {}
        return update.get("explanation") or finding.get("explanation")

    def evidence(self, finding: dict) -> list:
        """A folded finding's evidence: its first occurrence's, then what its repeats added."""
        update = self.updates.get(str(finding.get("id"))) or {}
        return list(finding.get("evidence") or []) + list(update.get("evidence") or [])


MAX_ADDED_ROWS = 200    # evidence rows one finding may bring back past the cap


def _row(ev: dict, t: int, layer: str) -> dict:
    return {"key": event_key(ev), "t": t, "layer": layer, "kind": _cut(ev.get("kind", "?"), 200),
            "host": _cut(ev.get("host") or "", 200), "source": _cut(ev.get("source", ""), 200),
            "sev": _cut(ev.get("severity") or "", 40), "text": _summary(ev), "detail": _detail(ev)}


def _with_code(text: str) -> str:
    """Escaped text with `backtick spans` (commands in remedies) shown as code."""
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:      # an unpaired backtick: keep it literal
        return html.escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _finding_html(n: int, f: dict, c: _Collector) -> str:
    esc = html.escape
    sev = _cut(f.get("severity") or "info", 40)
    count = (c.updates.get(str(f.get("id"))) or {}).get("count", f.get("count", 1))
    evidence = c.evidence(f)
    items = []
    for ev in evidence:
        if not isinstance(ev, dict):
            items.append(f"<li>{esc(_cut(ev, 300))}</li>")
            continue
        target = c.index.get(event_key(ev))
        label = _cut(f"{_utc(ev['time_ns']) if isinstance(ev.get('time_ns'), int) else '?'} "
                     f"{ev.get('layer', '?')} {ev.get('kind', '?')} {_summary(ev)}", 1000)
        if target:
            items.append(f'<li><a class="ev" href="#{target}" data-target="{target}">{esc(label)}</a></li>')
        else:
            items.append(f'<li><span class="ev missing">{esc(label)}</span> '
                         f'<span class="note">(not in the timeline below)</span></li>')
    seen = f" &middot; seen {int(count)} times" if isinstance(count, int) and count > 1 else ""
    return (f'<section class="finding sev-{esc(sev)}" id="finding-{n}">'
            f'<h3><span class="sev">{esc(sev.upper())}</span> {esc(_cut(f.get("title"), 500))}</h3>'
            f'<div class="meta">{esc(_cut(f.get("detector", ""), 200))} &middot; '
            f'{esc(_utc(f["time_ns"], True))}{seen}</div>'
            f'<p class="explanation">{esc(_cut(c.explanation(f)))}</p>'
            f'<p class="remedy"><b>Remedy:</b> {_with_code(_cut(f.get("remedy")))}</p>'
            f'<details open><summary>Evidence ({len(evidence)})</summary>'
            f'<ul class="evidence">{"".join(items)}</ul></details></section>')


def _error_html(e: dict) -> str:
    esc = html.escape
    return (f'<section class="finding sev-error detector-error">'
            f'<h3><span class="sev">DETECTOR DID NOT RUN</span> {esc(_cut(e.get("title"), 500))}</h3>'
            f'<p class="explanation">{esc(_cut(e.get("explanation")))}</p>'
            f'<p class="remedy"><b>Remedy:</b> {esc(_cut(e.get("remedy")))}</p>'
            f'<p class="note">What this detector looks for was not checked: the absence of '
            f'its findings says nothing.</p></section>')


# The page's style and script, kept as files beside this module (package data)
_CSS = "\n" + resources.files(__package__).joinpath("report.css").read_text()
_JS = "\n" + resources.files(__package__).joinpath("report.js").read_text()


class HtmlReport:
    """Push-style writer: `add(event)` for each event, `close()` writes the page."""

    def __init__(self, out_path: str, title: str = "correlate report", max_events: int = MAX_EVENTS):
        self.out_path, self.title, self.max_events = out_path, title, max_events
        self._c = _Collector(max_events)

    def add(self, ev: dict) -> None:
        self._c.add(ev)

    def close(self) -> dict:
        return _write_page(self._c, self.out_path, self.title, self.max_events)


def write_html(events: Iterable[dict], out_path: str, title: str = "correlate report",
               max_events: int = MAX_EVENTS) -> dict:
    """Write the report; returns counts (events kept, left out, findings)."""
    report = HtmlReport(out_path, title, max_events)
    for ev in events:
        report.add(ev)
    return report.close()


def _write_page(c: _Collector, out_path: str, title: str, max_events: int) -> dict:
    esc = html.escape
    title = _cut(title, 1000)
    c.finish()
    t0 = c.first or 0
    t1 = c.last or t0
    rows = [{"id": r["id"], "t": r["t"] - t0, "layer": r["layer"], "kind": r["kind"], "host": r["host"],
             "source": r["source"], "text": r["text"], "detail": r["detail"], "time": _utc(r["t"])}
            for r in c.rows]
    # Relative times keep JS numbers exact (absolute ns exceed 2**53).
    data = {"t0": 0, "t1": t1 - t0, "rows": rows}
    findings = sorted(c.findings, key=lambda f: ({"critical": 0, "error": 1, "warning": 2}.get(str(f.get("severity")), 3),
                                                  f["time_ns"]))
    counts = " &middot; ".join([f"{esc(k)} events: {v}" for k, v in sorted(c.layers.items())]
                               + [f"findings: {len(findings)}"]
                               + ([f"detectors that failed: {len(c.errors)}"] if c.errors else []))
    when = (f"{esc(_utc(t0, True))} &ndash; {esc(_utc(t1, True))}" if c.first is not None else "no events")
    hosts_opts = "".join(f'<option value="{esc(h, True)}">{esc(h)}</option>' for h in sorted(c.hosts))
    left_out = ""
    if c.left_out or c.findings_left_out:
        span = (f" between {esc(_utc(c.dropped_span[0], True))} and {esc(_utc(c.dropped_span[1], True))}"
                if c.dropped_span else "")
        left_out = (f'<div class="leftout">{c.left_out} events{span} were left out of this page (it keeps '
                    f'the first {max_events - max_events // 2} and the last {max_events // 2} events, and '
                    f'every event a finding points at); {c.findings_left_out} findings left out. Use '
                    f'<code>correlate timeline --since/--until</code> or filters for a narrower report.</div>')
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{esc(title)}</title><style>{_CSS}{PROFILE_CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1><div class=\"meta\">{when} &middot; {counts or 'empty'}"
        f" &middot; inputs: {esc(', '.join(sorted(c.sources)) or 'none')}</div></header><main>",
        left_out,
        f"<h2 id=\"findings\">Findings ({len(findings)})</h2>",
        "".join(_error_html(e) for e in c.errors),
        "".join(_finding_html(i + 1, f, c) for i, f in enumerate(findings)) or
        f"<p class=\"note\">No findings{' from the detectors that ran' if c.errors else ''}.</p>",
        profile_section(c.profile.snapshot()),
        "<h2 id=\"timeline\">Timeline</h2><div id=\"controls\">",
        "".join(f'<label><input type="checkbox" class="layer" value="{l}" checked> {l}</label>'
                for l in ("wire", "probe", "log", "finding")),
        f'<label>host <select id="host"><option value="">all</option>{hosts_opts}</select></label>',
        '<label>text <input id="q" type="search" placeholder="procedure, path, gfid, message..."></label>',
        '<button id="reset" type="button">Reset</button> <span id="shown"></span></div>',
        '<canvas id="overview" title="drag to zoom"></canvas><div id="range"></div>',
        '<table><thead><tr><th>time (UTC)</th><th>since start</th><th>layer</th><th>kind</th>'
        '<th>host / input</th><th>event</th></tr></thead><tbody id="rows"></tbody></table>'
        '<button id="more" type="button" style="display:none"></button>',
        '<noscript><p class="note">The timeline needs JavaScript; findings above do not.</p></noscript>',
        f'</main><script type="application/json" id="timeline-data">{script_json(data)}</script>',
        f"<script>{_JS}</script></body></html>\n",
    ]
    with open(out_path, "w", encoding="utf-8") as out:
        out.write("".join(parts))
    return {"events": len(c.rows), "left_out": c.left_out, "findings": len(findings)}
