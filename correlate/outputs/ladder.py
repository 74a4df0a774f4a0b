"""A ladder (sequence) diagram for a terminal: one column per endpoint, arrows for messages.

    time             127.0.0.1:1021     127.0.0.2:24007    127.0.0.2:49152
    10:00:00.000100  |---GETSPEC------->|                  |
    10:00:00.000900  |<--ok-------------|                  |
    10:00:00.001200  |---------SETVOLUME------------------>|
    10:00:00.002000  |<--------op_ret=-1 EACCES------------|
                     * log E 0-vol-client-0: SETVOLUME on remote-host failed

Columns are added as endpoints appear (the header is printed again when one is added), so
the view streams. Process probes, log entries and findings are notes under the arrows. The
same RPC seen in two captures (both ends of a connection) is drawn once. Every string shown
passes through `safe_text` (control characters escaped).
"""
from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Iterable, Iterator

from .terminal import format_time, safe_text

TIME_WIDTH = 17
COLUMN = 25               # fixed, so rows drawn before a new column appeared stay aligned
OTHER = "(other)"
GLUSTERD_PORT = 24007


def _result(ev: dict) -> str:
    if ev.get("reply_status") == "denied":
        return f"DENIED {ev.get('auth_status') or ev.get('reject_status') or ''}".strip()
    if ev.get("accept_status") not in (None, "SUCCESS"):
        return str(ev.get("accept_status"))
    if ev.get("op_ret") is not None and ev.get("op_ret") < 0:
        return f"op_ret={ev.get('op_ret')} {ev.get('errno_name') or ev.get('op_errno') or ''}".strip()
    return f"{ev.get('procedure') or ''} ok".strip()


def _label(ev: dict) -> str:
    kind = str(ev.get("kind", ""))
    conn = f"c{ev['conn']} " if ev.get("conn") is not None else ""
    if kind == "rpc.call":
        return conn + str(ev.get("procedure") or ev.get("procedure_num") or "call")
    if kind == "rpc.reply":
        return conn + _result(ev)
    if kind.startswith("tcp."):
        return conn + {"tcp.connect": "SYN", "tcp.refused": "SYN refused", "tcp.timeout": "SYN unanswered",
                "tcp.close": "close", "tcp.gap": "bytes not captured"}.get(kind, kind)
    return kind


def _ends(ev: dict) -> tuple[str, str, bool]:
    """(client column, server column, drawn from the client) of a wire event. A client is
    shown by its address (one process opens many ports), a server by address and port
    (each brick has its own)."""
    src, dst = str(ev["src"]), str(ev["dst"])
    from_client = ev.get("kind") != "rpc.reply"
    client, server = (src, dst) if from_client else (dst, src)
    client_ip = client.rsplit(":", 1)[0]
    port = server.rsplit(":", 1)[-1]
    role = "glusterd" if port == str(GLUSTERD_PORT) else "brick"
    return f"client {client_ip}", f"{role} {server}", from_client


class Ladder:
    def __init__(self, width: int | None = None):
        self.width = width or shutil.get_terminal_size((120, 24)).columns
        self.max_columns = max(3, (self.width - TIME_WIDTH) // COLUMN)
        self.columns: list[str] = []
        self._changed = False
        self._recent: deque[tuple] = deque(maxlen=4096)
        self._recent_set: set[tuple] = set()

    # -- layout ---------------------------------------------------------------------------

    def _col_width(self) -> int:
        return COLUMN

    def _column(self, endpoint: str) -> int:
        """The column of an endpoint, adding it (sets `_changed`) if it is new."""
        if endpoint in self.columns:
            return self.columns.index(endpoint)
        if len(self.columns) >= self.max_columns:
            if OTHER not in self.columns:
                self.columns[-1] = OTHER
                self._changed = True
            return len(self.columns) - 1
        self.columns.append(endpoint)
        self._changed = True
        return len(self.columns) - 1

    def header(self) -> list[str]:
        w = self._col_width()
        names = "".join(safe_text(c, w - 1)[: w - 1].ljust(w) for c in self.columns)
        return [f"{'time (UTC)':<{TIME_WIDTH}}{names}".rstrip()]

    def _lanes(self) -> list[str]:
        w = self._col_width()
        return list(("|" + " " * (w - 1)) * len(self.columns))

    def _arrow(self, time_ns: int, a: int, b: int, label: str) -> str:
        w = self._col_width()
        row = self._lanes()
        if a == b:   # both ends in the shared column
            text = f"|<> {label}"
            row[a * w:a * w + len(text)] = text
        else:
            lo, hi = sorted((a * w, b * w))
            span = hi - lo - 1
            body = list("-" * span)
            if a < b:
                body[-1] = ">"
            else:
                body[0] = "<"
            text = safe_text(label, max(0, span - 4))[: max(0, span - 4)]
            start = 2 if a < b else 3
            body[start:start + len(text)] = text
            row[lo + 1:hi] = body
        return (f"{format_time(time_ns):<{TIME_WIDTH}}" + "".join(row)).rstrip()

    def _note(self, text: str) -> str:
        room = max(20, self.width - TIME_WIDTH - 2)
        return " " * TIME_WIDTH + "* " + safe_text(text, room)[:room]

    # -- events ---------------------------------------------------------------------------

    def _duplicate(self, ev: dict) -> bool:
        """The same message already drawn from another capture (both ends of a connection)."""
        if ev.get("xid") is None:
            return False
        key = (ev.get("kind"), ev.get("src"), ev.get("dst"), ev.get("xid"))
        if key in self._recent_set:
            return True
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)
        return False

    def add(self, ev: dict) -> list[str]:
        """The lines this event adds to the diagram."""
        out: list[str] = []
        layer, kind = ev.get("layer"), str(ev.get("kind", ""))
        t = ev.get("time_ns", 0)
        if layer == "wire" and ev.get("src") and ev.get("dst"):
            if self._duplicate(ev):
                return out
            client, server, from_client = _ends(ev)
            self._changed = False
            a, b = self._column(client), self._column(server)
            if self._changed:
                out.extend(self.header())
            if not from_client:
                a, b = b, a
            out.append(self._arrow(t, a, b, _label(ev)))
        elif layer == "probe":
            args = ev.get("args") or {}
            shown = " ".join(f"{k}={args[k]}" for k in ("path", "atime", "atime_nsec", "mtime", "mtime_nsec")
                             if k in args)
            out.append(self._note(f"{format_time(t)} probe {ev.get('comm')}[{ev.get('pid')}] "
                                  f"{ev.get('function')} {shown}".rstrip()))
        elif layer == "log":
            out.append(self._note(f"{format_time(t)} log {ev.get('level') or ''} {ev.get('domain') or ''}: "
                                  f"{ev.get('message', '')}"))
        elif layer == "finding":
            if kind == "finding":
                out.append(self._note(f"{format_time(t)} FINDING [{ev.get('severity')}] {ev.get('detector')}: "
                                      f"{ev.get('title')}"))
        else:
            out.append(self._note(f"{format_time(t)} {layer} {kind}"))
        return out


def render_ladder(events: Iterable[dict], width: int | None = None) -> Iterator[str]:
    ladder = Ladder(width)
    for ev in events:
        yield from ladder.add(ev)
