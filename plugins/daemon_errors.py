"""daemon-errors: one of Gluster's own daemons (self-heal, rebalance, quota, geo-replication,
bitrot) failing at its job: bricks answering its calls with errors that are not the
everyday ones of a crawl.

A crawl meets ENOENT, ESTALE and ENODATA all the time (files removed since they were
indexed, xattrs not set yet) and EAGAIN on the non-blocking locks it tries: those are not
findings (nor are they any other detector's: daemons are not applications). EIO, ENOSPC,
EDQUOT, EACCES, EROFS... are: a heal that cannot write the good copy, a rebalance that
cannot migrate to a full brick. They say why `heal info` keeps listing entries or
`rebalance status` counts failures, with the daemon's log to read.

The daemon is known from its connection's SETVOLUME (`process-name`), so a capture that
begins after the daemon connected does not name it; the credential pid alone is not read
here (it would mean decoding every call).
"""
from __future__ import annotations


from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import DAEMON, GlusterState

from .gluster_facts import clock

# Everyday errors of a crawl: the file went away, the xattr is not there, the lock is taken.
ROUTINE = frozenset(("ENOENT", "ESTALE", "ENODATA", "EAGAIN", "EEXIST", "ENOTEMPTY", "ENXIO",
                     "EBUSY", "EWOULDBLOCK", "ENOTCONN"))
MAX_SHOWN = 6
MAX_DAEMONS = 256

# daemon kind -> (what its errors mean, what to do); VOLUME stands for the volume
REMEDIES = {
    "self-heal": ("the self-heal daemon cannot repair these files: `heal info` keeps listing "
                  "them and the bad copies stay bad",
                  "`gluster volume heal VOLUME info` (and `info split-brain`); read "
                  "/var/log/glusterfs/glustershd.log around these times; fix the brick's "
                  "error (space, permissions, a read-only or failing disk), then `gluster "
                  "volume heal VOLUME`."),
    "rebalance": ("the rebalance cannot migrate these files: `rebalance status` counts them "
                  "as failures and they stay where they were",
                  "`gluster volume rebalance VOLUME status` (the failures column); read "
                  "/var/log/glusterfs/VOLUME-rebalance.log; free space on the target bricks "
                  "(`df -h`, `storage.reserve`) or fix their error, then start the rebalance "
                  "again."),
    "quota": ("quota accounting fails for these files: `quota list` may show wrong usage",
              "/var/log/glusterfs/quotad.log and the brick logs; `gluster volume quota VOLUME "
              "list`."),
    "geo-replication": ("geo-replication cannot sync these files",
                        "`gluster volume geo-replication VOLUME ... status detail`, the gsyncd "
                        "logs under /var/log/glusterfs/geo-replication/."),
}
DEFAULT_REMEDY = ("the daemon cannot do its work on these files",
                  "Read that daemon's log under /var/log/glusterfs/ around these times and the "
                  "brick logs for the same errors.")


class _Trouble:
    __slots__ = ("actor", "volume", "bricks", "errors", "count", "examples", "first_ns", "last_ns")

    def __init__(self, actor, volume: str):
        self.actor, self.volume = actor, volume
        self.bricks: dict[str, int] = {}
        self.errors: dict[str, int] = {}           # "PROCEDURE ERRNO" -> count
        self.count = 0
        self.examples: list[dict] = []
        self.first_ns = self.last_ns = 0


class DaemonErrors(Detector):
    id = "daemon-errors"
    # error replies only need op_ret/errno_name; the state names the connection's process
    wants = Wants(kinds={"rpc.reply"}, procedures=(), failures=True, details=())

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.troubles: dict[tuple, _Trouble] = {}
        self.dropped = 0

    def observe(self, ev):
        if ev.get("op_ret") != -1 or not isinstance(ev.get("errno_name"), str) \
                or ev["errno_name"] in ROUTINE or ev.get("program") not in ("GlusterFS", None):
            return ()
        process = self.state.clients.process(ev)
        if process is None:
            return ()
        actor = process.actor()
        if actor.role != DAEMON:
            return ()
        key = (actor.kind, process.volume)
        trouble = self.troubles.get(key)
        if trouble is None:
            if len(self.troubles) >= MAX_DAEMONS:
                self.dropped += 1
                return ()
            trouble = self.troubles[key] = _Trouble(actor, process.volume)
            trouble.first_ns = ev["time_ns"]
        trouble.count += 1
        trouble.last_ns = ev["time_ns"]
        what = f"{ev.get('procedure')} {ev['errno_name']}"
        trouble.errors[what] = trouble.errors.get(what, 0) + 1
        brick = process.brick or str(ev.get("src"))
        trouble.bricks[brick] = trouble.bricks.get(brick, 0) + 1
        if len(trouble.examples) < MAX_SHOWN:
            trouble.examples.append(ev)
        return [self._finding(trouble, ev["time_ns"], refines=trouble.count > 1)]

    def finish(self):
        return [self._finding(t, t.last_ns, refines=True) for t in self.troubles.values()
                if t.count > 1]

    def _finding(self, t: _Trouble, time_ns: int, refines: bool) -> dict:
        meaning, remedy = REMEDIES.get(t.actor.kind, DEFAULT_REMEDY)
        volume = t.volume or "VOLNAME"
        errors = ", ".join(f"{w} x{n}" for w, n in sorted(t.errors.items(), key=lambda i: -i[1]))
        bricks = ", ".join(f"{b} ({n})" for b, n in sorted(t.bricks.items(), key=lambda i: -i[1]))
        span = f" from {clock(t.first_ns)} to {clock(t.last_ns)}" if t.last_ns > t.first_ns else ""
        name = t.actor.name
        return self.finding(
            time_ns, severity="warning",
            title=f"{name} failing on volume {volume}",
            explanation=(f"Bricks answered {name} with errors that are not the everyday ones "
                         f"of its crawl (ENOENT, ESTALE, ENODATA, EAGAIN){span}: {errors}; on "
                         f"{bricks}. So {meaning}. The applications are not affected by these "
                         "calls themselves."),
            remedy=remedy.replace("VOLUME", volume),
            evidence=t.examples, key=f"{t.actor.kind}:{t.volume}", refines=refines,
            daemon=t.actor.kind, volume=t.volume or None, errors=dict(t.errors))

    def drops(self) -> dict[str, int]:
        return {f"daemon errors not followed ({MAX_DAEMONS} daemons and volumes were)": self.dropped}



@hookimpl
def correlate_detectors(state):
    return [DaemonErrors(state)]
