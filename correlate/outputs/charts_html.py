"""The report's charts on one time axis: latency over time per brick (with finding markers
and a band where a brick did not answer), a procedure's latency on each replica peer, and lock
waits and holds per client. Used by `timeline --html` and `profile --html`.

Why uPlot: the charts need a time axis, log scales, zoom, a cursor synced across charts and
a legend, for up to some thousand points per chart and tens of charts; uPlot (MIT, 50 KB
minified, canvas) does exactly that and stays fast at 100k points, where SVG from Python
(pygal, matplotlib) would make the page heavy and static, and hand-drawn axes would be a
second, untested charting library. It is vendored unmodified in `vendor/` (version and
checksum in vendor/README.md) and inlined with its licence, so the page fetches nothing.
Our overlays (finding markers, bands, lock bars) are uPlot plugins placed with its scales.

The data is bounded on the server side (chart_data): buckets per brick, the slowest calls
and every reply a finding points at; the page never carries one point per call.
"""
from __future__ import annotations

from importlib import resources



def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="ascii")


_LICENSE = _read("vendor/uPlot.LICENSE")
# The library first (it defines the global uPlot), then the page's chart code.
JS = ("\n/* uPlot 1.6.31, https://github.com/leeoniya/uPlot\n" + _LICENSE.replace("*/", "* /") + "*/\n"
      + _read("vendor/uPlot.iife.min.js") + "\n;" + _read("charts.js"))
CSS = _read("vendor/uPlot.min.css") + """
.chart{background:#fff;padding:6px 12px;margin:10px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.chart h3{margin:2px 0 4px;font:600 13px ui-monospace,monospace;word-break:break-all}
.chart .uplot{font-family:ui-monospace,monospace}.chart .u-legend{font-size:11px}
ul.marks{margin:2px 0;padding-left:0;list-style:none;font:11px ui-monospace,monospace}
ul.marks li{border-left:3px solid #888;padding-left:6px;margin:1px 0;word-break:break-all}
ul.marks li.band{border-color:rgba(214,39,40,.5);background:rgba(214,39,40,.08)}
.chart .tip{font:12px ui-monospace,monospace;min-height:1.4em;word-break:break-all}
"""


def charts_section(data: dict) -> str:
    """The containers the page's script fills, with what each chart shows (no data here)."""
    parts = ['<h2 id="charts">Over time</h2><p class="note">One time axis for every chart: drag over '
             'any chart to zoom all of them and the timeline below; double-click to zoom out. '
             'Latency is call to reply as captured; the line is the geometric mean per time '
             'bucket, the shaded band min to max, orange dots the slowest calls, red dots the '
             'replies a finding points at, dashed lines the findings, red bands the time a brick '
             'did not answer. Lock procedures are left out of these and shown in the lock chart.'
             '</p><noscript><p class="note">The charts need JavaScript.</p></noscript>'
             '<div id="charts-latency"></div>']
    if data.get("dropped_bricks"):
        parts.append(f'<p class="note">{int(data["dropped_bricks"])} replies of further servers '
                     f'are not charted (at most {len(data["bricks"])} servers).</p>')
    if data.get("peers"):
        parts.append('<h2 id="peers">Replica peers side by side</h2><p class="note">The same '
                     'procedure on each brick of a replica or disperse set: a slow brick stands '
                     'out against its peers at the same moments.</p><div id="charts-peers"></div>')
    if data.get("locks", {}).get("lanes"):
        parts.append('<h2 id="locks">Lock waits and holds</h2><p class="note">Per client: a wait '
                     'runs from a lock request to its reply, a hold from the grant to the unlock '
                     '(or the connection\'s close). The longest ones are drawn, with every wait a '
                     'finding points at; point at a bar for its details.</p><div id="charts-locks"></div>')
    return "".join(parts)


__all__ = ["CSS", "JS", "charts_section"]
