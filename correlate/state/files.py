"""Which file a gfid is: names learned from the replies that bind a name to a gfid (LOOKUP,
CREATE, MKDIR, MKNOD, SYMLINK, LINK: parent gfid + basename in the reply's args, the gfid in
its iatt), walked up to the root; and which gfid an open fd is (OPEN and CREATE replies, per
connection). Read by the data-loss and lock detectors and by `timeline --path`.

A reply carries its call's identifying arguments (the decoder joins them), so naming keeps no
call. Every table is bounded: the oldest entries go first, counted in `dropped`.
"""
from __future__ import annotations

from collections import OrderedDict

ROOT_GFID = "00000000-0000-0000-0000-000000000001"
NULL_GFID = "00000000-0000-0000-0000-000000000000"
MAX_ENTRIES = 50_000          # names and entries (about 300 bytes a file)
NAMING = frozenset({"LOOKUP", "CREATE", "MKDIR", "MKNOD", "SYMLINK", "LINK"})
OPENING = frozenset({"OPEN", "CREATE", "OPENDIR"})
# the procedures whose args and results FileNames reads (a detector lists them in `details`)
DETAILS = NAMING | OPENING


class Bounded(OrderedDict):
    """At most `limit` entries, the oldest dropped first and counted in `dropped`."""

    def __init__(self, limit: int | None = None):
        super().__init__()
        self.limit = limit
        self.dropped = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > (self.limit or MAX_ENTRIES):
            self.popitem(last=False)
            self.dropped += 1


def stat_of(reply: dict) -> dict:
    """The iatt of the object a reply is about (LOOKUP: `prestat`, CREATE and friends: `stat`)."""
    result = reply.get("result") or {}
    for key in ("stat", "prestat"):
        st = result.get(key)
        if isinstance(st, dict) and st.get("ia_gfid") not in (None, NULL_GFID):
            return st
    return {}


def gfid_arg(ev: dict) -> str | None:
    """The gfid a call or reply names in its arguments (not the null gfid)."""
    args = ev.get("args")
    gfid = args.get("gfid") if isinstance(args, dict) else None
    return gfid if isinstance(gfid, str) and gfid != NULL_GFID else None


class FileNames:
    def __init__(self):
        self.names: Bounded = Bounded()     # gfid -> (parent gfid, basename)
        self.entries: Bounded = Bounded()   # (parent gfid, basename) -> gfid
        self.fds: Bounded = Bounded()       # (source, conn, fd) -> gfid

    def learn(self, reply: dict, args: dict | None = None) -> str | None:
        """Learn from a successful reply (`args`: its call's, when the reply lacks them);
        returns the gfid it named or opened, if any."""
        proc = reply.get("procedure")
        if reply.get("kind") != "rpc.reply" or proc not in DETAILS:
            return None
        op_ret = reply.get("op_ret")
        if not isinstance(op_ret, int) or op_ret < 0:
            return None
        args = args or reply.get("args") or {}
        gfid = stat_of(reply).get("ia_gfid") or (gfid_arg(reply) if proc in OPENING else None)
        if not isinstance(gfid, str):
            return None
        pargfid, bname = args.get("pargfid"), args.get("bname")
        if proc in NAMING and isinstance(pargfid, str) and isinstance(bname, str) and bname:
            self.names[gfid] = (pargfid, bname)
            self.entries[(pargfid, bname)] = gfid
        fd = (reply.get("result") or {}).get("fd")
        if proc in OPENING and isinstance(fd, int):
            self.fds[(reply.get("source"), reply.get("conn"), fd)] = gfid
        return gfid

    def gfid_of_fd(self, ev: dict) -> str | None:
        """The gfid behind the fd a call uses, from the OPEN/CREATE that returned it."""
        args = ev.get("args")
        fd = args.get("fd") if isinstance(args, dict) else None
        return self.fds.get((ev.get("source"), ev.get("conn"), fd)) if isinstance(fd, int) else None

    def path(self, gfid: str | None) -> str:
        """The file's path, "gfid:<gfid>" when the capture never saw its name, or
        "<gfid:G>/a/b" when it saw only the last names."""
        if not gfid:
            return "?"
        if gfid == ROOT_GFID:
            return "/"
        parts, at = [], gfid
        for _ in range(64):
            if at == ROOT_GFID:
                return "/" + "/".join(reversed(parts))
            if at not in self.names:
                break
            at, name = self.names[at]
            parts.append(name)
        if not parts:
            return f"gfid:{gfid}"
        return f"<gfid:{at}>/" + "/".join(reversed(parts))

    def known_path(self, gfid: str | None) -> str | None:
        """The path when the capture saw the file's name (else None)."""
        path = self.path(gfid)
        return None if path == "?" or path.startswith(("gfid:", "<gfid:")) else path

    def name_path(self, pargfid: str | None, bname: str | None) -> str:
        parent = self.path(pargfid)
        return (parent.rstrip("/") + "/" + (bname or "")) if parent != "?" else (bname or "?")

    def gfid_of(self, pargfid: str | None, bname: str | None) -> str | None:
        return self.entries.get((pargfid, bname))
