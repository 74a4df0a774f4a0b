"""Every event of a report, folded: one row per connection and procedure (wire), per process
and function (probes), per input and level (logs), with counts, errors by name, and the first
and last time. The page keeps only a bounded sample of events as rows; this table accounts for
all of them. At most MAX_ROWS rows; events past that are folded into one "other" row per layer.
"""
from __future__ import annotations

import html
from collections import Counter

from ..profile import reply_error

MAX_ROWS = 400
MAX_ERROR_NAMES = 8          # error names listed per row (the rest summed as "other")


class _Row:
    __slots__ = ("count", "errors", "first", "last", "max_latency")

    def __init__(self):
        self.count = 0
        self.errors: Counter = Counter()
        self.first = self.last = None
        self.max_latency = 0


class EventFold:
    def __init__(self):
        self.rows: dict[tuple, _Row] = {}

    @staticmethod
    def _key(ev: dict) -> tuple:
        layer, kind = str(ev.get("layer")), str(ev.get("kind"))
        if kind in ("rpc.call", "rpc.reply"):
            client, server = (ev.get("src"), ev.get("dst")) if kind == "rpc.call" else (ev.get("dst"), ev.get("src"))
            return (layer, "rpc", f"{client} \u2192 {server}", str(ev.get("procedure") or ev.get("procedure_num")))
        if layer == "wire":
            return (layer, kind, f"{ev.get('src')} \u2192 {ev.get('dst')}", "")
        if layer == "probe":
            return (layer, kind, f"{ev.get('comm')} pid {ev.get('pid')}", str(ev.get("function")))
        return (layer, kind, str(ev.get("host") or ev.get("source")), str(ev.get("level") or ""))

    def add(self, ev: dict, t: int) -> None:
        if ev.get("layer") == "finding":
            return
        key = self._key(ev)
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= MAX_ROWS:
                key = (key[0], "(other)", "(more rows than the table holds)", "")
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = _Row()
        row.count += 1
        row.first = t if row.first is None else min(row.first, t)
        row.last = t if row.last is None else max(row.last, t)
        if ev.get("kind") == "rpc.reply":
            error = reply_error(ev)
            if error:
                row.errors[str(error)[:60]] += 1
            lat = ev.get("latency_ns")
            if isinstance(lat, int) and lat > row.max_latency:
                row.max_latency = lat
        elif ev.get("layer") == "log" and str(ev.get("level")) in ("E", "C", "A"):
            row.errors[str(ev.get("level"))] += 1

    def section(self, cut, clock) -> str:
        """The table: `cut` bounds and escapes text, `clock` formats a time."""
        esc = html.escape
        if not self.rows:
            return ""
        order = sorted(self.rows.items(), key=lambda kv: (kv[0][0], -kv[1].count, kv[0]))
        body = []
        for (layer, kind, where, what), r in order:
            names = r.errors.most_common()
            errors = ", ".join(f"{n} {c}" for n, c in names[:MAX_ERROR_NAMES])
            if len(names) > MAX_ERROR_NAMES:
                errors += f", other {sum(c for _n, c in names[MAX_ERROR_NAMES:])}"
            latency = f"{r.max_latency / 1e6:.3f} ms" if r.max_latency else ""
            body.append(f'<tr class="{esc(cut(layer, 20), True)}"><td>{esc(cut(layer, 20))}</td>'
                        f'<td>{esc(cut(kind, 60))}</td><td>{esc(cut(where, 200))}</td>'
                        f'<td>{esc(cut(what, 100))}</td><td class="n">{r.count}</td>'
                        f'<td class="err">{esc(cut(errors, 600))}</td><td>{esc(latency)}</td>'
                        f'<td>{esc(clock(r.first))}</td><td>{esc(clock(r.last))}</td></tr>')
        return ('<h2 id="fold">Events folded</h2><p class="note">Every event of the input counted '
                'here (findings are above): per connection and procedure, per process and '
                'function, per input and log level. Errors are error replies by name and log '
                'messages of level E, C or A.</p><table class="fold"><thead><tr><th>layer</th>'
                '<th>kind</th><th>where</th><th>what</th><th>events</th><th>errors</th>'
                '<th>max latency</th><th>first (UTC)</th><th>last (UTC)</th></tr></thead><tbody>'
                + "".join(body) + "</tbody></table>")
