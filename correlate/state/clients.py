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
    return ClientProcess(
        pid=int(pid.group(1)) if pid else None,
        host=host.group(1) if host else "",
        process_name=name if isinstance(name, str) else "",
        translator=xl.group(1) if xl else "",
        brick=f"{rhost if isinstance(rhost, str) else ''}:{remote}" if isinstance(remote, str) else "",
        volume=volume.lstrip("/") if isinstance(volume, str) else "")


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
        self.dropped = 0

    def observe_setvolume(self, call: dict) -> None:
        options = (call.get("args") or {}).get("dict")
        if not isinstance(options, dict):
            return
        process = parse_setvolume(options)
        if process is None:
            return
        key = (call.get("source"), call.get("conn"))
        self._by_conn.pop(key, None)
        self._by_conn[key] = process
        if len(self._by_conn) > MAX_CONNECTIONS:
            self._by_conn.popitem(last=False)
            self.dropped += 1

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
            if pid == 0 or (pid is not None and pid == process.pid and process.process_name == "fuse"):
                # the client by itself: RELEASE, PING, or FUSE re-opening fds after a reconnect
                return Actor(CLIENT, process.actor().kind or "client",
                             f"the Gluster client process itself ({process.actor().name})", process.pid)
            actor = process.actor()
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
