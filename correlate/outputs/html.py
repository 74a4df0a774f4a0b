"""A timeline as one self-contained HTML report (inline CSS and JS, nothing fetched).

Findings come first, each with its explanation, remedy and links to its evidence in the
timeline below. The timeline can be filtered by layer, host and text, and zoomed by dragging
over the overview strip. Findings are rendered in HTML (escaped with html.escape); timeline
rows are rendered by the page's script from JSON embedded with `<`, `>`, `&`, U+2028 and
U+2029 escaped, and inserted as text (never as markup). At most `max_events` events are kept
for the page; the report says how many were left out.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import re
from collections import Counter
from collections.abc import Iterable

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
    """Keeps what the page needs from a stream: capped rows, findings, tallies."""

    def __init__(self, max_events: int):
        self.max_events = max_events
        self.rows: list[dict] = []
        self.index: dict[tuple, str] = {}
        self.findings: list[dict] = []
        self.errors: list[dict] = []      # detectors that failed: a report must not look healthy
        self.updates: dict[str, int] = {}
        self.left_out = 0
        self.findings_left_out = 0
        self.layers: Counter[str] = Counter()
        self.hosts: set[str] = set()
        self.sources: set[str] = set()
        self.first: int | None = None
        self.last: int | None = None
        self.profile = Profile()      # bounded: sketches, not the latencies

    def add(self, ev: dict) -> None:
        self.profile.observe(ev)
        t = ev.get("time_ns")
        if not isinstance(t, int):
            self.left_out += 1
            return
        if t > 0:   # time 0: an event no input timed, which must not stretch the range to 1970
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)
        layer = _cut(ev.get("layer", "?"), 40)
        self.layers[layer] += 1
        self.sources.add(_cut(ev.get("source", "?"), 200))
        if ev.get("host"):
            self.hosts.add(_cut(ev["host"], 200))
        if ev.get("kind") == "finding.update" and ev.get("id"):
            self.updates[str(ev["id"])] = ev.get("count", 1)
        if layer == "finding" and ev.get("kind") == "finding":
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append(ev)
            else:
                self.findings_left_out += 1
        if ev.get("kind") == "detector.error" and len(self.errors) < MAX_FINDINGS:
            self.errors.append(ev)
        if len(self.rows) >= self.max_events:
            self.left_out += 1
            return
        row_id = f"e{len(self.rows) + 1}"
        self.index.setdefault(event_key(ev), row_id)
        self.rows.append({"id": row_id, "t": t, "layer": layer, "kind": _cut(ev.get("kind", "?"), 200),
                          "host": _cut(ev.get("host") or "", 200), "source": _cut(ev.get("source", ""), 200),
                          "sev": _cut(ev.get("severity") or "", 40), "text": _summary(ev),
                          "detail": _detail(ev)})


def _finding_html(n: int, f: dict, c: _Collector) -> str:
    esc = html.escape
    sev = _cut(f.get("severity") or "info", 40)
    count = c.updates.get(str(f.get("id")), f.get("count", 1))
    items = []
    for ev in f.get("evidence") or []:
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
            f'<p class="explanation">{esc(_cut(f.get("explanation")))}</p>'
            f'<p class="remedy"><b>Remedy:</b> {esc(_cut(f.get("remedy")))}</p>'
            f'<details open><summary>Evidence ({len(f.get("evidence") or [])})</summary>'
            f'<ul class="evidence">{"".join(items)}</ul></details></section>')


def _error_html(e: dict) -> str:
    esc = html.escape
    return (f'<section class="finding sev-error detector-error">'
            f'<h3><span class="sev">DETECTOR DID NOT RUN</span> {esc(_cut(e.get("title"), 500))}</h3>'
            f'<p class="explanation">{esc(_cut(e.get("explanation")))}</p>'
            f'<p class="remedy"><b>Remedy:</b> {esc(_cut(e.get("remedy")))}</p>'
            f'<p class="note">What this detector looks for was not checked: the absence of '
            f'its findings says nothing.</p></section>')


_CSS = """
:root{--wire:#1f77b4;--probe:#9467bd;--log:#b8860b;--finding:#d62728;--bg:#fbfbfd;--fg:#1d1d1f}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,sans-serif;margin:0;background:var(--bg);color:var(--fg)}
header{padding:14px 22px;background:#20232a;color:#f4f4f6}header h1{margin:0 0 4px;font-size:20px}
header .meta{color:#c8c8d0;font-size:13px}main{padding:12px 22px}
h2{font-size:16px;margin:18px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.finding{border-left:6px solid var(--finding);background:#fff;padding:8px 14px;margin:10px 0;
 box-shadow:0 1px 3px rgba(0,0,0,.08)}
.finding h3{margin:2px 0;font-size:15px}.finding .meta{color:#666;font-size:12px}
.finding.sev-warning{border-color:#e69500}.finding.sev-info{border-color:#3b82f6}.finding.sev-critical{border-color:#7f0000}
.sev{display:inline-block;font-size:11px;padding:1px 6px;border-radius:3px;background:var(--finding);color:#fff}
.sev-warning .sev{background:#e69500}.sev-info .sev{background:#3b82f6}.sev-critical .sev{background:#7f0000}
.explanation,.remedy{white-space:pre-wrap;word-break:break-word;margin:6px 0}
ul.evidence{margin:4px 0;padding-left:20px;font:12px ui-monospace,monospace}
ul.evidence li{word-break:break-all}.note{color:#888;font-style:italic}
#controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:8px 0}
#controls label{user-select:none}#q{width:280px;padding:3px 6px}
#overview{width:100%;height:70px;border:1px solid #ccc;background:#fff;cursor:crosshair;display:block}
#range{font-size:12px;color:#555;margin:3px 0 8px}
table{border-collapse:collapse;width:100%;font:12px ui-monospace,monospace;background:#fff}
th{position:sticky;top:0;background:#eee;text-align:left;padding:3px 6px;z-index:1}
td{padding:2px 6px;border-bottom:1px solid #f0f0f0;vertical-align:top}
td.text{word-break:break-all;white-space:pre-wrap}
td:nth-child(-n+4){white-space:nowrap}
td:nth-child(5){max-width:14em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.wire td:first-child{border-left:4px solid var(--wire)}tr.probe td:first-child{border-left:4px solid var(--probe)}
tr.log td:first-child{border-left:4px solid var(--log)}tr.finding td:first-child{border-left:4px solid var(--finding)}
tr.finding{background:#fff3f3;font-weight:600}
.badge{display:inline-block;min-width:52px;text-align:center;border-radius:3px;color:#fff;font-size:11px;padding:0 4px}
.badge.wire{background:var(--wire)}.badge.probe{background:var(--probe)}.badge.log{background:var(--log)}.badge.finding{background:var(--finding)}
tr.hl td{background:#fff59d!important}tr.detail td{background:#f7f7fa;white-space:pre-wrap;word-break:break-all}
.leftout{background:#fff8e1;border:1px solid #f0c36d;padding:6px 10px;margin:8px 0}
"""

_JS = r"""
(function(){
"use strict";
// Rows are built when first shown and at most `limit` matching rows are in the page at once
// ("Show more" adds a page), so a 50,000-event report stays responsive.
var data=JSON.parse(document.getElementById("timeline-data").textContent);
var rows=data.rows, t0=data.t0, PAGE=2000, limit=PAGE, matching=[];
var tbody=document.getElementById("rows"), canvas=document.getElementById("overview");
var q=document.getElementById("q"), hostSel=document.getElementById("host"), more=document.getElementById("more");
var zoom=null, byId={}, drag=null;
var COLORS={wire:"#1f77b4",probe:"#9467bd",log:"#b8860b",finding:"#d62728"};
var LANES=["finding","wire","probe","log"];
rows.forEach(function(r){r.hay=(r.kind+" "+r.host+" "+r.source+" "+r.text).toLowerCase();byId[r.id]=r;});
function fmtRel(ns){return "+"+(ns/1e9).toFixed(6)+"s";}
function cell(tr,text,cls){var td=document.createElement("td");td.textContent=text;if(cls)td.className=cls;tr.appendChild(td);}
function rowOf(r){
  if(r.tr)return r.tr;
  var tr=document.createElement("tr");tr.id=r.id;tr.className=r.layer;
  cell(tr,r.time);cell(tr,fmtRel(r.t-t0));
  var td=document.createElement("td"),b=document.createElement("span");b.className="badge "+r.layer;
  b.textContent=r.layer;td.appendChild(b);tr.appendChild(td);
  cell(tr,r.kind);cell(tr,r.host||r.source);cell(tr,r.text,"text");
  tr.addEventListener("click",function(){r.open=!r.open;render();});
  return r.tr=tr;
}
function detailOf(r){
  if(r.dt)return r.dt;
  var d=document.createElement("tr"),td=document.createElement("td");d.className="detail";
  td.colSpan=6;td.textContent=r.detail;d.appendChild(td);return r.dt=d;
}
function layersOn(){var on={};document.querySelectorAll("input.layer").forEach(function(c){on[c.value]=c.checked;});return on;}
function visible(r,on,text,host){
  if(on[r.layer]===false)return false;
  if(host&&r.host!==host)return false;
  if(zoom&&(r.t<zoom[0]||r.t>zoom[1]))return false;
  if(text&&r.hay.indexOf(text)<0)return false;
  return true;
}
function render(){
  var frag=document.createDocumentFragment(),n=Math.min(limit,matching.length);
  for(var i=0;i<n;i++){var r=matching[i];frag.appendChild(rowOf(r));if(r.open)frag.appendChild(detailOf(r));}
  tbody.textContent="";tbody.appendChild(frag);
  more.style.display=matching.length>n?"":"none";
  more.textContent="Show "+Math.min(PAGE,matching.length-n)+" more of "+(matching.length-n)+" not shown";
  document.getElementById("shown").textContent=matching.length+" of "+rows.length+" events shown"+
    (matching.length>n?" (first "+n+" in the table)":"");
}
function apply(){
  var on=layersOn(),text=q.value.trim().toLowerCase(),host=hostSel.value;
  matching=rows.filter(function(r){return visible(r,on,text,host);});
  limit=PAGE;render();
  var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1;
  document.getElementById("range").textContent="Range: "+fmtRel(lo-t0)+" .. "+fmtRel(hi-t0)+(zoom?" (zoomed: drag again or Reset)":" (drag over the strip to zoom)");
  draw();
}
function draw(){
  var w=canvas.clientWidth||800,h=canvas.clientHeight||70;canvas.width=w;canvas.height=h;
  var ctx=canvas.getContext("2d");ctx.clearRect(0,0,w,h);
  var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1,s=Math.max(1,hi-lo),lh=h/LANES.length;
  ctx.font="10px sans-serif";
  LANES.forEach(function(l,i){ctx.fillStyle="#999";ctx.fillText(l,2,i*lh+10);});
  rows.forEach(function(r){if(r.t<lo||r.t>hi)return;var x=(r.t-lo)/s*(w-50)+48,i=LANES.indexOf(r.layer);if(i<0)i=3;
    ctx.fillStyle=COLORS[r.layer]||"#555";ctx.fillRect(x,i*lh+2,r.layer==="finding"?3:1.5,lh-4);});
  if(drag){ctx.fillStyle="rgba(0,0,0,.15)";ctx.fillRect(Math.min(drag[0],drag[1]),0,Math.abs(drag[1]-drag[0]),h);}
}
function xToT(x){var lo=zoom?zoom[0]:data.t0,hi=zoom?zoom[1]:data.t1,w=canvas.clientWidth||800;
  return lo+Math.max(0,Math.min(1,(x-48)/(w-50)))*(hi-lo);}
canvas.addEventListener("mousedown",function(e){drag=[e.offsetX,e.offsetX];});
canvas.addEventListener("mousemove",function(e){if(drag){drag[1]=e.offsetX;draw();}});
window.addEventListener("mouseup",function(){if(!drag)return;var a=Math.min(drag[0],drag[1]),b=Math.max(drag[0],drag[1]);
  drag=null;if(b-a>3)zoom=[xToT(a),xToT(b)];apply();});
function resetFilters(){zoom=null;q.value="";hostSel.value="";
  document.querySelectorAll("input.layer").forEach(function(c){c.checked=true;});}
document.getElementById("reset").addEventListener("click",function(){resetFilters();apply();});
document.querySelectorAll("input.layer").forEach(function(c){c.addEventListener("change",apply);});
q.addEventListener("input",apply);hostSel.addEventListener("change",apply);
more.addEventListener("click",function(){limit+=PAGE;render();});
function reveal(id){
  var r=byId[id];if(!r)return;
  var i=matching.indexOf(r);
  if(i<0){resetFilters();apply();i=matching.indexOf(r);}
  if(i>=limit){limit=i+PAGE;render();}
  document.querySelectorAll("tr.hl").forEach(function(t){t.classList.remove("hl");});
  rowOf(r).classList.add("hl");r.tr.scrollIntoView({block:"center"});
}
document.querySelectorAll("a.ev").forEach(function(a){a.addEventListener("click",function(e){
  e.preventDefault();history.replaceState(null,"","#"+a.getAttribute("data-target"));reveal(a.getAttribute("data-target"));});});
// The view can be given in the address: #e12 shows event 12; #q=TEXT&layers=wire,log&host=H&from=NS&to=NS
// (ns since the first event) opens a filtered view that can be shared.
function fromHash(){
  var h=decodeURIComponent(location.hash.slice(1));
  if(/^e\d+$/.test(h)){apply();reveal(h);return;}
  var p={};h.split("&").forEach(function(kv){var i=kv.indexOf("=");if(i>0)p[kv.slice(0,i)]=kv.slice(i+1);});
  if(p.q!==undefined)q.value=p.q;
  if(p.host!==undefined)hostSel.value=p.host;
  if(p.layers!==undefined){var on=p.layers.split(",");document.querySelectorAll("input.layer").forEach(function(c){c.checked=on.indexOf(c.value)>=0;});}
  if(p.from!==undefined||p.to!==undefined){var a=Number(p.from||data.t0),b=Number(p.to||data.t1);if(!isNaN(a)&&!isNaN(b)&&b>=a)zoom=[a,b];}
  apply();
}
window.addEventListener("hashchange",fromHash);
window.addEventListener("resize",draw);
fromHash();
})();
"""


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
    t0 = c.first or 0
    t1 = c.last or t0
    rows = [{"id": r["id"], "t": r["t"] - t0, "layer": r["layer"], "kind": r["kind"], "host": r["host"],
             "source": r["source"], "text": r["text"], "detail": r["detail"], "time": _utc(r["t"])}
            for r in c.rows]
    # Relative times keep JS numbers exact (absolute ns exceed 2**53).
    data = {"t0": 0, "t1": t1 - t0, "rows": rows}
    findings = sorted(c.findings, key=lambda f: ({"critical": 0, "error": 1, "warning": 2}.get(str(f.get("severity")), 3),
                                                  f["time_ns"]))
    counts = " &middot; ".join(f"{esc(k)}: {v}" for k, v in sorted(c.layers.items()))
    when = (f"{esc(_utc(t0, True))} &ndash; {esc(_utc(t1, True))}" if c.first is not None else "no events")
    hosts_opts = "".join(f'<option value="{esc(h, True)}">{esc(h)}</option>' for h in sorted(c.hosts))
    left_out = ""
    if c.left_out or c.findings_left_out:
        left_out = (f'<div class="leftout">{c.left_out} events were left out of this page (it keeps the first '
                    f'{max_events}); {c.findings_left_out} findings left out. Use <code>correlate timeline '
                    f'--since/--until</code> or filters for a narrower report.</div>')
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
