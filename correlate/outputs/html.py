"""A timeline as one self-contained HTML report (inline CSS and JS, nothing fetched).

Findings come first, each with its explanation, remedy and every piece of its evidence, linked
to the timeline below. Then the charts on one time axis (charts_html: latency per brick with
the findings marked, replica peers side by side, lock waits and holds), the latency profile
per brick, every event folded into counts per connection and procedure (html_fold), and the
timeline itself, filterable by layer, host and text and zoomable from the charts.

The page stays small whatever the capture: the timeline holds a bounded sample of events
(html_collect: the first and the last ones, the findings, their evidence, error replies, each
under a cap in rows and bytes) and says how many it left out and from when to when; the full
list is the JSON Lines timeline (`correlate timeline INPUT --json`). Findings past a byte
budget are listed by title. Measured: a 4,251-event capture went from 6.1 MB to
2.1 MB, 42,500 events from 60 MB to 2.4 MB (bench/html_report.py, docs/timeline.md).

Findings are rendered in HTML (escaped with html.escape); timeline rows and chart data are
JSON embedded with `<`, `>`, `&`, U+2028 and U+2029 escaped, and inserted by the page's script
as text (never as markup).
"""
from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Iterable
from importlib import resources

from .charts_html import CSS as CHART_CSS, JS as CHART_JS, charts_section
from .html_collect import (MAX_EVENTS, MAX_FINDINGS, Collector, cut as _cut, event_key, script_json,
                           summary as _summary)
from .profile_html import CSS as PROFILE_CSS, profile_section

__all__ = ["HtmlReport", "MAX_EVENTS", "MAX_FINDINGS", "event_key", "script_json", "write_html"]
FINDINGS_BYTES = 500_000     # findings rendered in full; past it, by title (the rest is in the JSONL)


def _utc(time_ns: int, with_date: bool = False) -> str:
    try:
        t = _dt.datetime.fromtimestamp(time_ns // 1_000_000_000, _dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):   # no date can hold it
        return f"@{_cut(time_ns, 40)}ns"
    frac = f"{time_ns % 1_000_000_000:09d}"
    return (f"{t:%Y-%m-%d %H:%M:%S}.{frac} UTC" if with_date else f"{t:%H:%M:%S}.{frac[:6]}")


def _with_code(text: str) -> str:
    """Escaped text with `backtick spans` (commands in remedies) shown as code."""
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:      # an unpaired backtick: keep it literal
        return html.escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _finding_html(n: int, f: dict, c: Collector) -> str:
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
                     f"{ev.get('layer', '?')} {ev.get('kind', '?')} {_summary(ev)}", 400)
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


def _finding_line(n: int, f: dict) -> str:
    """A finding past the page's budget: its title and time; the rest is in the JSONL."""
    esc = html.escape
    sev = _cut(f.get("severity") or "info", 40)
    return (f'<li class="finding-line sev-{esc(sev)}" id="finding-{n}"><span class="sev">{esc(sev.upper())}'
            f'</span> {esc(_utc(f["time_ns"]))} {esc(_cut(f.get("detector", ""), 200))}: '
            f'{esc(_cut(f.get("title"), 300))}</li>')


def _findings_html(findings: list[dict], c: Collector) -> str:
    parts, size, lines = [], 0, []
    for i, f in enumerate(findings):
        if size < FINDINGS_BYTES:
            parts.append(_finding_html(i + 1, f, c))
            size += len(parts[-1])
        else:
            lines.append(_finding_line(i + 1, f))
    if lines:
        parts.append(f'<p class="note">{len(lines)} more findings, by title (this page holds '
                     f'{FINDINGS_BYTES // 1000} kB of findings in full; each one\'s evidence is in the '
                     f'JSON Lines timeline: <code>correlate timeline INPUT --json --layer finding</code>):'
                     f'</p><ul class="finding-lines">{"".join(lines)}</ul>')
    return "".join(parts)


def _error_html(e: dict) -> str:
    esc = html.escape
    return (f'<section class="finding sev-error detector-error">'
            f'<h3><span class="sev">DETECTOR DID NOT RUN</span> {esc(_cut(e.get("title"), 500))}</h3>'
            f'<p class="explanation">{esc(_cut(e.get("explanation")))}</p>'
            f'<p class="remedy"><b>Remedy:</b> {esc(_cut(e.get("remedy")))}</p>'
            f'<p class="note">What this detector looks for was not checked: the absence of '
            f'its findings says nothing.</p></section>')


# The page's style and script, kept as files beside this module (package data)
_CSS = "\n" + resources.files(__package__).joinpath("report.css").read_text() + CHART_CSS
_JS = CHART_JS + "\n" + resources.files(__package__).joinpath("report.js").read_text()


class HtmlReport:
    """Push-style writer: `add(event)` for each event, `close()` writes the page."""

    def __init__(self, out_path: str, title: str = "correlate report", max_events: int = MAX_EVENTS):
        self.out_path, self.title, self.max_events = out_path, title, max_events
        self._c = Collector(max_events, _utc)

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


def _write_page(c: Collector, out_path: str, title: str, max_events: int) -> dict:
    esc = html.escape
    title = _cut(title, 1000)
    c.finish()
    t0 = c.first or 0
    t1 = c.last or t0
    findings = sorted(c.findings, key=lambda f: ({"critical": 0, "error": 1, "warning": 2}.get(str(f.get("severity")), 3),
                                                  f["time_ns"]))
    charts = c.charts.data(findings, c.updates, t1)
    # The charts' x axis: Unix seconds of the first and last event (never an empty range).
    charts.update(t0_s=t0 / 1e9, x0=round(t0 / 1e9, 6), x1=round(max(t1, t0 + 1_000_000) / 1e9, 6))
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
                    f'the first and the last events, up to {max_events - max_events // 2} and '
                    f'{max_events // 2}, every finding and the events they point at, and error replies, '
                    f'within a few MB); {c.findings_left_out} findings left out. Every event is counted '
                    f'in <a href="#fold">Events folded</a>; the full list is the JSON Lines timeline: '
                    f'<code>correlate timeline INPUT --json &gt; timeline.jsonl</code>, or use '
                    f'<code>correlate timeline --since/--until</code> or filters for a narrower report.</div>')
    head = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{esc(title)}</title><style>{_CSS}{PROFILE_CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1><div class=\"meta\">{when} &middot; {counts or 'empty'}"
        f" &middot; inputs: {esc(', '.join(sorted(c.sources)) or 'none')}</div></header><main>",
        left_out,
        f"<h2 id=\"findings\">Findings ({len(findings)})</h2>",
        "".join(_error_html(e) for e in c.errors),
        _findings_html(findings, c) or
        f"<p class=\"note\">No findings{' from the detectors that ran' if c.errors else ''}.</p>",
        charts_section(charts),
        profile_section(c.profile.snapshot()),
        c.fold.section(_cut, lambda t: _utc(t) if t is not None else ""),
        "<h2 id=\"timeline\">Timeline</h2>",
        f'<p class="note">This page holds {len(c.rows)} of {c.seen + c.bad} events'
        + (' (see above for what was left out)' if c.left_out else '') + '.</p><div id="controls">',
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
        # Relative times keep JS numbers exact (absolute ns exceed 2**53).
        f'</main><script type="application/json" id="timeline-data">{{"t0":0,"t1":{t1 - t0},'
        f'"charts":{script_json(charts)},"rows":[',
    ]
    with open(out_path, "w", encoding="utf-8") as out:
        out.write("".join(head))
        for i, row in enumerate(c.rows, 1):       # each row serialised once, when it was kept
            out.write(f'{"," if i > 1 else ""}{{"id":"e{i}","t":{row[0] - t0},{row[2]}')
        out.write(f"]}}</script><script>{_JS}</script></body></html>\n")
    return {"events": len(c.rows), "left_out": c.left_out, "findings": len(findings)}
