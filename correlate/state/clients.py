"""Who is talking: every brick connection's client process, and for every call the actor
behind it: an application (a gfapi program, a FUSE mount, Samba, qemu, NFS-Ganesha), the
Gluster client process acting on its own, or one of Gluster's own daemons.

Gluster marks its internal clients twice:
- the credential pid of their calls is a special negative number (libglusterfs
  `enum _gf_special_pid`, and glusterd's quota crawl, QUOTA_CRAWL_PID -100);
- SETVOLUME's `process-name` names the process ("glustershd", "gfapi.glfsheal", "quotad",
  "rebalance", "fuse", "gfapi.<program>") and `process-uuid` holds its pid and host.
A call's own credential wins over its connection: an application's client stack makes some
calls for itself (set-utime, -13), and the FUSE client re-opens files after a reconnect with
its own pid, not the application's (pid 0: RELEASE, PING, the client's own bookkeeping).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

APPLICATION, DAEMON, CLIENT, UNKNOWN = "application", "daemon", "client", "unknown"
MAX_CONNECTIONS = 65536

# credential pid -> (kind, how a person names it)
SPECIAL_PIDS = {
    -1: ("geo-replication", "geo-replication (gsyncd)"),
    -2: ("hadoop", "the Hadoop plugin"),
    -3: ("rebalance", "the rebalance process"),
    -4: ("no-root-squash", "a Gluster internal mount (no-root-squash)"),
    -5: ("quota", "the quota mount"),
    -6: ("self-heal", "the self-heal daemon"),
    -7: ("glfsheal", "glfsheal (gluster volume heal info)"),
    -8: ("bitrot", "the bitrot daemon"),
    -9: ("scrubber", "the bitrot scrubber"),
    -10: ("tier", "the tier daemon"),
    -11: ("trash", "the trash translator"),
    -12: ("add-replica", "the add-replica mount"),
    -13: ("set-utime", "the client's set-utime (ctime) call"),
    -100: ("quota-crawl", "the quota crawl (quota enable)"),
}
# SETVOLUME process-name of Gluster's own processes -> (kind, name)
DAEMON_NAMES = {
    "glustershd": ("self-heal", "the self-heal daemon"),
    "gfapi.glfsheal": ("glfsheal", "glfsheal (gluster volume heal info)"),
    "quotad": ("quota", "the quota daemon"),
    "rebalance": ("rebalance", "the rebalance process"),
    "gsyncd": ("geo-replication", "geo-replication (gsyncd)"),
    "bitd": ("bitrot", "the bitrot daemon"),
    "scrubber": ("scrubber", "the bitrot scrubber"),
    "glustershd-heal": ("self-heal", "the self-heal daemon"),
    "nfs": ("gluster-nfs", "Gluster's NFS server"),
}
# the program behind "gfapi.<program>" -> (kind, name)
GFAPI_PROGRAMS = {
    "smbd": ("samba", "Samba (smbd)"),
    "qemu-img": ("qemu", "qemu-img"),
    "qemu-system-x86_64": ("qemu", "qemu"),
    "qemu-kvm": ("qemu", "qemu"),
    "ganesha.nfsd": ("nfs-ganesha", "NFS-Ganesha"),
}
_PID = re.compile(r"-PID:(-?\d+)")
_HOST = re.compile(r"-HOST:(.*?)-PC_NAME:")
_TRANSLATOR = re.compile(r"PC_NAME:(.+?)-RECON_NO")
_CONTEXT = re.compile(r"CTX_ID:([0-9a-fA-F-]+?)-GRAPH_ID")
_RECONNECTS = re.compile(r"RECON_NO:-?(\d+)")
_INDEX = re.compile(r"-client-(\d+)$")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a call. `role` is one of APPLICATION, DAEMON (Gluster's own), CLIENT (the
    Gluster client process by itself) or UNKNOWN (no SETVOLUME seen, an ordinary pid)."""
    role: str
    kind: str           # "self-heal", "fuse", "gfapi", "samba", ... ("" when unknown)
    name: str           # for people: "the self-heal daemon", "gfapi python pid 16975 on vm"
    pid: int | None = None

    @property
    def internal(self) -> bool:
        """Gluster's own doing, not an application's: a daemon, or the client by itself."""
        return self.role in (DAEMON, CLIENT)


@dataclass(frozen=True, slots=True)
class ClientProcess:
    """The client process on one brick connection, from its SETVOLUME call."""
    pid: int | None
    host: str
    process_name: str
    translator: str     # VOL-client-N: the client side of one brick
    brick: str          # remote-host:remote-subvolume
    volume: str
    context: str = ""   # CTX_ID: one client process's graph, the same across its reconnects
    reconnects: int = 0  # RECON_NO: how often this translator reconnected before

    @property
    def index(self) -> int | None:
        """N of the client translator VOL-client-N: which brick of its volume (replica index)."""
        m = _INDEX.search(self.translator)
        return int(m.group(1)) if m else None

    @property
    def identity(self) -> tuple[str, str]:
        """One client translator of one process: what a reconnect has in common with the
        connection it replaces."""
        return (self.context, self.translator)

    def actor(self) -> Actor:
        where = f" on {self.host}" if self.host else ""
        if self.process_name in DAEMON_NAMES:
            kind, name = DAEMON_NAMES[self.process_name]
            return Actor(DAEMON, kind, name, self.pid)
        if self.process_name.startswith("gfapi."):
            program = self.process_name[len("gfapi."):]
            kind, name = GFAPI_PROGRAMS.get(program, ("gfapi", f"gfapi {program}"))
            return Actor(APPLICATION, kind, f"{name} pid {self.pid}{where}", self.pid)
        if self.process_name == "fuse":
            return Actor(APPLICATION, "fuse", f"the FUSE mount pid {self.pid}{where}", self.pid)
        label = f"pid {self.pid}{where}" if self.pid is not None else f"a client{where}"
        return Actor(UNKNOWN, "", label, self.pid)


def parse_setvolume(options: dict) -> ClientProcess | None:
    """The client process from a SETVOLUME call's dict; None when it names none."""
    uuid = options.get("process-uuid")
    if not isinstance(uuid, str):
        return None
    pid = _PID.search(uuid)
    host = _HOST.search(uuid)
    xl = _TRANSLATOR.search(uuid)
    name = options.get("process-name")
    remote = options.get("remote-subvolume")
    rhost = options.get("remote-host")
    volume = options.get("volfile-key")
    context = _CONTEXT.search(uuid)
    reconnects = _RECONNECTS.search(uuid)
    return ClientProcess(
        pid=int(pid.group(1)) if pid else None,
        host=host.group(1) if host else "",
        process_name=name if isinstance(name, str) else "",
        translator=xl.group(1) if xl else "",
        brick=f"{rhost if isinstance(rhost, str) else ''}:{remote}" if isinstance(remote, str) else "",
        volume=volume.lstrip("/") if isinstance(volume, str) else "",
        context=context.group(1) if context else "",
        reconnects=int(reconnects.group(1)) if reconnects else 0)


def _bounded_put(table: OrderedDict, key, value) -> bool:
    """Put, newest last; True when the oldest entry had to go."""
    table.pop(key, None)
    table[key] = value
    if len(table) > MAX_CONNECTIONS:
        table.popitem(last=False)
        return True
    return False


def special_actor(pid) -> Actor | None:
    """One of Gluster's internal clients, by its credential pid alone."""
    if type(pid) is int and pid in SPECIAL_PIDS:
        kind, name = SPECIAL_PIDS[pid]
        return Actor(DAEMON, kind, name, pid)
    return None


class Clients:
    """Connection -> client process, and the actor of any call. Connections are keyed by
    (source, conn): two captures may number theirs alike. Bounded: oldest dropped first."""

    PROCEDURES = frozenset({"SETVOLUME"})   # whose call args it reads

    def __init__(self):
        self._by_conn: OrderedDict[tuple, ClientProcess] = OrderedDict()
        # a client translator whose connection the server side closed -> that tcp.close
        self._cut: OrderedDict[tuple, dict] = OrderedDict()
        # (source, conn) of a reconnect -> (the close of the connection it replaces, SETVOLUME)
        self._reconnects: OrderedDict[tuple, tuple[dict, dict]] = OrderedDict()
        self.dropped = 0

    def observe_close(self, ev: dict) -> None:
        """A brick connection closed; by the server side (brick killed or restarted, or a
        brick that gave up on the client), the client will reconnect."""
        process = self.process(ev)
        if process is not None and ev.get("by") == "server" and process.translator:
            _bounded_put(self._cut, process.identity, ev)

    def reconnect(self, ev: dict) -> tuple[dict, dict] | None:
        """For an event on a connection that replaced one the server side closed: (that
        tcp.close, this connection's SETVOLUME call); else None."""
        return self._reconnects.get((ev.get("source"), ev.get("conn")))

    def observe_setvolume(self, call: dict) -> None:
        options = (call.get("args") or {}).get("dict")
        if not isinstance(options, dict):
            return
        process = parse_setvolume(options)
        if process is None:
            return
        key = (call.get("source"), call.get("conn"))
        if _bounded_put(self._by_conn, key, process):
            self.dropped += 1
        cut = self._cut.pop(process.identity, None)
        if cut is not None:
            _bounded_put(self._reconnects, key, (cut, call))

    def process(self, ev: dict) -> ClientProcess | None:
        """The client process on the connection of an event (call, reply or TCP event)."""
        return self._by_conn.get((ev.get("source"), ev.get("conn")))

    def actor(self, call: dict) -> Actor:
        """Who made this call: its credential pid first, then its connection's process."""
        cred = call.get("cred")
        pid = cred.get("pid") if isinstance(cred, dict) else None
        special = special_actor(pid)
        if special is not None:
            return special
        process = self.process(call)
        if process is not None:
            actor = process.actor()
            if process.process_name == "fuse" and pid in (0, process.pid):
                # the mount process by itself (RELEASE, PING, re-opening fds after a
                # reconnect), not one of the applications it serves
                where = f" on {process.host}" if process.host else ""
                return Actor(CLIENT, "fuse", f"the FUSE client process (pid {process.pid}{where})",
                             process.pid)
            if pid == 0:        # a gfapi program's client stack, on its own: the same process
                return actor
            if pid is not None and pid != process.pid and actor.role == APPLICATION:
                # a FUSE mount's calls carry the requesting thread's id, not the mount's pid
                return Actor(APPLICATION, actor.kind, f"pid {pid} through {actor.name}", pid)
            return actor
        src = call.get("src") if call.get("kind") == "rpc.call" else call.get("dst")
        host = (src or "").rsplit(":", 1)[0]
        if pid == 0:
            return Actor(CLIENT, "client", f"the Gluster client at {host}", 0)
        label = f"{host} pid {pid}" if pid is not None else host or "a client"
        return Actor(UNKNOWN, "", label, pid)
