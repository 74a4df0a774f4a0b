"""A profile snapshot as an HTML section: per brick, one row per procedure on a shared
logarithmic latency axis (so a slow brick stands out beside its peers), drawn as inline SVG.

Each row: a bar from p50 to p99, a thick tick at p50, a thin one at p90, a dot at max, and the
numbers beside it. Every text from the capture is escaped with html.escape. At most MAX_BRICKS
bricks are drawn (the page says how many more there were).

The standalone page (`profile --html`) also carries the report's charts over time
(charts_html: latency per brick, replica peers, lock waits and holds), without finding
markers: `profile` runs no detectors (`timeline --html` does).
"""
from __future__ import annotations

import html
import math

from .profile_text import duration

ROW_H = 22
LABEL_W = 130
PLOT_W = 520
TEXT_W = 330
MAX_ROWS = 40          # procedures drawn per brick (the busiest by total latency)
MAX_BRICKS = 24        # bricks drawn (glusterd first, then by path): the page stays small

CSS = """
.profile-brick{background:#fff;padding:6px 12px;margin:10px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.profile-brick h3{margin:4px 0;font-size:14px;font-family:ui-monospace,monospace}
.profile-brick .meta{color:#666;font-size:12px}
svg.latency text{font:11px ui-monospace,monospace;fill:#222}svg.latency .axis{fill:#777}
svg.latency .grid{stroke:#e5e5e5}svg.latency .band{fill:#9ecae1}svg.latency .p50{stroke:#08519c;stroke-width:3}
svg.latency .p90{stroke:#3182bd;stroke-width:1.5}svg.latency .max{fill:#d62728}
"""


def _axis(snap: dict) -> tuple[float, float]:
    """log10 bounds covering every brick's p50..max, in whole decades."""
    values = [p[k] for b in snap["bricks"] for p in _procedures(b) for k in ("p50_ns", "max_ns")
              if p.get(k)]
    if not values:
        return 3.0, 9.0
    return math.floor(math.log10(max(1, min(values)))), math.ceil(math.log10(max(values)) + 1e-9)


def _procedures(brick: dict) -> list[dict]:
    if brick.get("procedures"):
        return brick["procedures"]
    return [dict(p, procedure=f"{p['procedure']} ({c['client']})")
            for c in brick.get("clients", []) for p in c["procedures"]]


def _decade(power: int) -> str:
    units = ((9, "s"), (6, "ms"), (3, "us"), (0, "ns"))
    for base, unit in units:
        if power >= base:
            return f"{10 ** (power - base)} {unit}"
    return "1 ns"


def _chart(procs: list[dict], lo: float, hi: float) -> str:
    esc = html.escape
    procs = [p for p in procs if p.get("p50_ns") is not None][:MAX_ROWS]
    height = ROW_H * (len(procs) + 1) + 4
    width = LABEL_W + PLOT_W + TEXT_W

    def x(ns: int) -> float:
        v = math.log10(max(ns, 1))
        return LABEL_W + (min(max(v, lo), hi) - lo) / (hi - lo) * PLOT_W

    parts = [f'<svg class="latency" width="{width}" height="{height}" role="img" '
             f'viewBox="0 0 {width} {height}">']
    for decade in range(int(lo), int(hi) + 1):
        gx = x(10 ** decade)
        parts.append(f'<line class="grid" x1="{gx:.1f}" y1="0" x2="{gx:.1f}" y2="{height - ROW_H}"/>'
                     f'<text class="axis" x="{gx:.1f}" y="{height - 6}" text-anchor="middle">'
                     f'{esc(_decade(decade))}</text>')
    for i, p in enumerate(procs):
        y = i * ROW_H + ROW_H / 2
        p50, p90, p99, mx = p["p50_ns"], p["p90_ns"], p["p99_ns"], p["max_ns"]
        errors = sum(p["errors"].values())
        label = f"{p['procedure']}"[:18]
        text = (f"p50 {duration(p50)}  p99 {duration(p99)}  max {duration(mx)}  "
                f"n={p['calls']}" + (f" err={errors}" if errors else ""))
        parts.append(
            f'<g><title>{esc(p["procedure"])}: p50 {esc(duration(p50))}, p90 {esc(duration(p90))}, '
            f'p99 {esc(duration(p99))}, max {esc(duration(mx))}, {p["calls"]} calls</title>'
            f'<text x="4" y="{y + 4:.1f}">{esc(label)}</text>'
            f'<rect class="band" x="{x(p50):.1f}" y="{y - 5:.1f}" width="{max(1.0, x(p99) - x(p50)):.1f}" height="10"/>'
            f'<line class="p90" x1="{x(p90):.1f}" y1="{y - 6:.1f}" x2="{x(p90):.1f}" y2="{y + 6:.1f}"/>'
            f'<line class="p50" x1="{x(p50):.1f}" y1="{y - 7:.1f}" x2="{x(p50):.1f}" y2="{y + 7:.1f}"/>'
            f'<circle class="max" cx="{x(mx):.1f}" cy="{y:.1f}" r="3"/>'
            f'<text x="{LABEL_W + PLOT_W + 8}" y="{y + 4:.1f}">{esc(text)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def profile_section(snap: dict) -> str:
    """The `<h2>` section with one chart per brick, sharing one latency axis."""
    esc = html.escape
    if not snap.get("bricks"):
        return ""
    lo, hi = _axis(snap)
    if hi <= lo:
        hi = lo + 1
    out = ['<h2 id="profile">Latency per brick</h2><p class="note">Call to reply as captured, '
           'one row per procedure, slowest in total first. Bar: p50 to p99; thick tick: p50; '
           'thin tick: p90; red dot: max. Same scale for every brick.</p>']
    for b in snap["bricks"][:MAX_BRICKS]:
        name = b.get("brick") or "(brick path not in the capture)"
        volume = f" &middot; volume {esc(str(b['volume']))}" if b.get("volume") else ""
        out.append(f'<section class="profile-brick"><h3>{esc(str(b["server"]))} {esc(str(name))}</h3>'
                   f'<div class="meta">read {b["bytes_read"]} bytes &middot; written '
                   f'{b["bytes_written"]} bytes{volume}</div>{_chart(_procedures(b), lo, hi)}</section>')
    if len(snap["bricks"]) > MAX_BRICKS:
        out.append(f'<p class="note">{len(snap["bricks"]) - MAX_BRICKS} more servers are not drawn; '
                   f'<code>correlate profile INPUT</code> lists them all.</p>')
    return "".join(out)


def write_profile_page(snap: dict, out_path: str, title: str, charts=None) -> None:
    """The profile's page; with `charts` (a ChartData fed the same events) the charts over
    time come first."""
    from .charts_html import CSS as CHART_CSS, JS as CHART_JS, charts_section
    from .html_collect import script_json
    data = None
    if charts is not None and snap.get("from_ns") is not None:
        t0, t1 = snap["from_ns"], max(snap["to_ns"], snap["from_ns"] + 1_000_000)
        data = charts.data([], {}, t1)
        data.update(t0_s=t0 / 1e9, x0=round(t0 / 1e9, 6), x1=round(t1 / 1e9, 6))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>body{{font:14px system-ui,sans-serif;"
            f"margin:16px;background:#fbfbfd}}.note{{color:#666}}h2{{font-size:16px}}{CSS}{CHART_CSS}"
            f"</style></head><body><h1>{html.escape(title)}</h1><main>"
            + (charts_section(data) if data else "") + profile_section(snap) + "</main>"
            + (f'<script type="application/json" id="timeline-data">{{"charts":{script_json(data)}}}'
               f'</script><script>{CHART_JS}</script>' if data else "") + "</body></html>\n")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(page)
