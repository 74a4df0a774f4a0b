"""What `correlate timeline` keeps: --since/--until times (absolute or +DURATION from the
first event) and the content filters (connection, host, gfid, path, pid, layer).

`--path` names a file by its full path (`/dir/f`) or its basename (`f`). The wire names a
file only when a LOOKUP or CREATE resolves it; every later call uses its gfid (or an fd
opened on it), so the filter learns the gfid from those replies and follows it."""
from __future__ import annotations

import calendar
import datetime as _dt
import re

import click

from ..state.files import FileNames, gfid_arg

_DURATION = re.compile(r"^([+-]?\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?$")
_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, None: 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_time(text: str) -> tuple[str, int]:
    """`--since/--until` values: ("abs", ns) or ("rel", ns after the first event).

    Accepted: ISO 8601 (`2024-01-01T10:00:00.5Z`, `2024-01-01 10:00:00+02:00`; no offset
    means UTC), Unix seconds (`1700000000.25`), or `+N[ns|us|ms|s|m|h]` from the first event."""
    t = text.strip()
    if t.startswith("+"):
        m = _DURATION.match(t)
        if not m:
            raise click.BadParameter(f"{text!r}: expected +N with unit ns, us, ms, s, m or h")
        return "rel", int(float(m.group(1)) * _UNITS[m.group(2)])
    if re.fullmatch(r"\d+(\.\d+)?", t, re.ASCII):
        sec, _, frac = t.partition(".")
        if len(sec) > 11:      # 2262 is 10 digits of seconds: more is no time (nor a 4300-digit int)
            raise click.BadParameter(f"{text[:40]!r}...: Unix seconds beyond the year 2262")
        return "abs", int(sec) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\s*(Z|[+-]\d\d:?\d\d)?", t)
    if not m:
        raise click.BadParameter(f"{text!r}: expected an ISO 8601 time, Unix seconds or +DURATION")
    try:
        base = _dt.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None
    secs = calendar.timegm(base.timetuple())
    tz = m.group(4)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return "abs", secs * 1_000_000_000 + int((m.group(3) or "0").ljust(9, "0"))


def _norm_gfid(value) -> str:
    return str(value).replace("-", "").lower()


class PathMatch:
    """A file named by full path or basename, and the gfids the capture bound to it."""

    def __init__(self, path: str):
        self.text = path
        name = path.rstrip("/") or "/"
        self.full = ("/" + name.lstrip("/")) if "/" in name else None
        self.base = name.rsplit("/", 1)[-1]
        self.files = FileNames()
        self.gfids: set[str] = set()

    def names(self, value) -> bool:
        """Whether a path as an event gives it (a probe's argument, a finding's `path`) is it."""
        if not isinstance(value, str) or not value:
            return False
        value = "/" + value.strip("/")
        return value == self.full if self.full else value.rsplit("/", 1)[-1] == self.base

    def _entry(self, args: dict) -> bool:
        bname = args.get("bname")
        if not isinstance(bname, str) or not bname:
            return False
        if self.full is None:
            return bname == self.base
        return self.files.name_path(args.get("pargfid"), bname) == self.full

    def observe(self, ev: dict) -> None:
        """Every event, in order, whether shown or not: the names and fds it binds."""
        if ev.get("kind") != "rpc.reply":
            return
        gfid = self.files.learn(ev)
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        if gfid and (self._entry(args) or (self.full and self.files.path(gfid) == self.full)):
            self.gfids.add(gfid)

    def about(self, ev: dict) -> bool:
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        if any(self.names(v) for v in (args.get("path"), ev.get("path"))):
            return True
        if self._entry(args) or (self.full is None and args.get("name") == self.base):
            return True
        if self.gfids and (gfid_arg(ev) in self.gfids or ev.get("gfid") in self.gfids
                           or self.files.gfid_of_fd(ev) in self.gfids):
            return True
        message = ev.get("message")      # Gluster logs print paths inside their text
        return ev.get("layer") == "log" and isinstance(message, str) and self.text in message


class EventFilter:
    """The filters of `correlate timeline`. Findings pass when one of their evidence events
    passes the content filters (conn, host, gfid, path, pid)."""

    def __init__(self, *, since=None, until=None, conn=None, host=None, gfid=None, path=None,
                 pid=None, layers=()):
        self.since, self.until = since, until
        self.first_ns: int | None = None
        self.conn = conn
        self.host = host
        self.gfid = _norm_gfid(gfid) if gfid else None
        self.path = PathMatch(path) if path else None
        self.pid = pid
        self.layers = set(layers)

    def _bound(self, spec) -> int | None:
        if spec is None:
            return None
        kind, ns = spec
        return ns if kind == "abs" else (self.first_ns or 0) + ns

    def _content(self, ev: dict) -> bool:
        if self.host is not None and ev.get("host") != self.host:
            return False
        if self.conn is not None:
            if self.conn.isdigit():
                if str(ev.get("conn")) != self.conn:
                    return False
            elif self.conn not in (ev.get("src"), ev.get("dst"), ev.get("client"), ev.get("server")):
                return False
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        if self.gfid is not None:
            values = [args.get("gfid"), args.get("pargfid"), ev.get("gfid")]
            text = _norm_gfid(ev.get("message", "")) if ev.get("layer") == "log" else ""
            if not any(v and _norm_gfid(v).startswith(self.gfid) for v in values) and self.gfid not in text:
                return False
        if self.path is not None and not self.path.about(ev):
            return False
        if self.pid is not None:
            cred = ev.get("cred") if isinstance(ev.get("cred"), dict) else {}
            if self.pid not in (ev.get("pid"), cred.get("pid")):
                return False
        return True

    def __call__(self, ev: dict) -> bool:
        if self.path is not None:
            self.path.observe(ev)
        t = ev.get("time_ns", 0)
        if self.first_ns is None:
            self.first_ns = t
        since, until = self._bound(self.since), self._bound(self.until)
        if since is not None and t < since:
            return False
        if until is not None and t > until:
            return False
        if self.layers and ev.get("layer") not in self.layers:
            return False
        if ev.get("layer") == "finding":
            evidence = [e for e in ev.get("evidence") or [] if isinstance(e, dict)]
            has_content_filter = any(x is not None for x in (self.conn, self.host, self.gfid, self.path, self.pid))
            # the finding's own fields (path, gfid) or one of its evidence events
            return not has_content_filter or any(self._content(e) for e in [ev, *evidence])
        return self._content(ev)
