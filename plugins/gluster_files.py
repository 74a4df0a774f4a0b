"""What the data-loss detectors share: who is on each brick connection and which file a gfid is.

`Files.observe(ev)` is fed every event, then answers:
- `client(conn)`: the client process on a brick connection, from its SETVOLUME call
  (`process-uuid` holds `PID:` and `PC_NAME:`, the client translator `VOL-client-N`; the
  `remote-host` and `remote-subvolume` name the brick);
- `path(gfid)`: the file's path from the LOOKUP, CREATE, MKDIR, MKNOD or SYMLINK that named it
  (parent gfid + basename, walked up to the root), or "gfid:<gfid>" when the capture never saw
  its name (it started after the lookup);
- `call_of(reply)`: the call a reply answers, for the procedures a detector asked to keep.
A reply carries its call's credential and identifying arguments (the decoder joins them), so
naming needs no call kept: a flood of unanswered LOOKUPs holds nothing here.
Every table is bounded: the oldest entries go first, counted in `dropped` (drops()).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from correlate.state.files import (MAX_ENTRIES, NAMING, ROOT_GFID, Bounded, FileNames,  # noqa: F401
                                   stat_of)

MAX_CALLS = 4096              # calls waiting for their reply (whole events, 1-2 KB each)
# What Files.observe reads the args or results of: a detector using it routes these events
# (calls and replies) and lists them in its `wants.details`.
DETAILS = frozenset(NAMING | {"SETVOLUME"})
_UUID_FIELDS = re.compile(r"PID:(?P<pid>-?\d+)|HOST:(?P<host>.+?)(?=-PC_NAME)|PC_NAME:(?P<xl>.+?)-RECON_NO")


@dataclass
class Client:
    pid: int | None
    host: str
    translator: str       # VOL-client-N, the client side of one brick
    brick: str            # host:/brick/path
    conn: object = None

    @property
    def index(self) -> int | None:
        m = re.search(r"-client-(\d+)$", self.translator)
        return int(m.group(1)) if m else None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "a client"
        return f"{who} on {self.host}" if self.host else who


def parse_process_uuid(text: str) -> tuple[int | None, str, str]:
    """(pid, host, client translator) from a SETVOLUME process-uuid."""
    pid, host, xl = None, "", ""
    for m in _UUID_FIELDS.finditer(text or ""):
        if m.group("pid"):
            pid = int(m.group("pid"))
        elif m.group("host"):
            host = m.group("host")
        elif m.group("xl"):
            xl = m.group("xl")
    return pid, host, xl


class Files(FileNames):
    def __init__(self, keep_calls: set[str] = frozenset()):
        super().__init__()
        self.clients: Bounded = Bounded()   # conn -> Client
        self.calls: Bounded = Bounded(MAX_CALLS)    # (conn, xid) -> call, until its reply
        self.keep = frozenset(keep_calls)
        self._answered: tuple = (None, None)

    def observe(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "rpc.reply":
            # a call is kept only until its reply: the reply being handled can still ask for it
            key = (ev.get("conn"), ev.get("xid"))
            self._answered = (key, self.calls.pop(key, None))
        if kind == "rpc.call":
            if ev.get("procedure") in self.keep:
                self.calls[(ev.get("conn"), ev.get("xid"))] = ev
            if ev.get("procedure") == "SETVOLUME":
                opts = (ev.get("args") or {}).get("dict") or {}
                pid, host, xl = parse_process_uuid(str(opts.get("process-uuid", "")))
                if xl:
                    brick = f"{opts.get('remote-host', '')}:{opts.get('remote-subvolume', '')}"
                    self.clients[ev.get("conn")] = Client(pid, host, xl, brick, ev.get("conn"))
        elif kind == "rpc.reply" and ev.get("procedure") in NAMING and ev.get("op_ret", -1) >= 0:
            self.learn(ev, ev.get("args") or (self.call_of(ev) or {}).get("args") or {})

    def call_of(self, reply: dict) -> dict | None:
        key = (reply.get("conn"), reply.get("xid"))
        if self._answered[0] == key:
            return self._answered[1]
        return self.calls.get(key)

    def drops(self) -> dict[str, int]:
        """What the tables forgot to stay bounded (a detector using Files reports these)."""
        return {f"calls forgotten before their reply ({MAX_CALLS:,} were kept)": self.calls.dropped,
                f"file names forgotten ({MAX_ENTRIES:,} were kept)":
                    max(self.names.dropped, self.entries.dropped),
                "connections' clients forgotten (table full)": self.clients.dropped}

    def client(self, conn) -> Client | None:
        return self.clients.get(conn)

    def pid_of(self, ev: dict) -> int | None:
        """The client process behind a call: its credentials, else its connection's SETVOLUME
        (calls the client makes by itself, such as re-opening fds, carry pid 0)."""
        pid = (ev.get("cred") or {}).get("pid")
        if pid:
            return pid
        c = self.client(ev.get("conn"))
        return c.pid if c else None
