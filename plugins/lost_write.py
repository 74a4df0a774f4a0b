"""lost-write: data glfs acknowledged that never reached a brick.

With write-behind (on by default) glfs_pwrite/glfs_write return success as soon as the data
is queued; the WRITE goes out later, and if it fails, only the next fsync or close says so.
The fop probes follow each fd in the kernel: a failed glfs_fsync/glfs_close return carries
the writes acknowledged since the last successful fsync (`unsynced_writes`). That return,
with the failed WRITE replies on the wire in between, is the whole story: the application
was told its data was written, and it was not.
"""
from __future__ import annotations

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.events import with_details
from correlate.state import GlusterState

SYNC_FUNCTIONS = {"glfs_fsync", "glfs_fdatasync", "glfs_close"}
MAX_FAILED_WRITES = 1000
MARGIN_NS = 1_000_000_000   # a WRITE can leave the client just before the probe's tally time


class LostWrite(Detector):
    id = "lost-write"
    needs = frozenset({"probe"})   # the application's fsync/close returns say the data was lost
    # File names, clients and the WRITE calls come from the shared state. A WRITE's call
    # (gfid, pid) is read only when its reply failed: decoded then (with_details), not for
    # every WRITE.
    wants = Wants(kinds={"rpc.reply", "probe.call", "probe.return"},
                  procedures=(), failures=True, details=frozenset())

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.failed_writes: list[tuple[dict, dict]] = []   # (call, reply), oldest first
        self.last_call: dict[tuple, dict] = {}

    def observe(self, ev):
        kind = ev.get("kind")
        if kind == "rpc.reply" and ev.get("procedure") == "WRITE" and ev.get("op_ret") == -1:
            self.failed_writes.append((with_details(self.state.calls.call_of(ev) or {}), with_details(ev)))
            del self.failed_writes[:-MAX_FAILED_WRITES]
        elif kind == "probe.call":
            self.last_call[(ev.get("pid"), ev.get("tid"))] = ev
        elif kind == "probe.return" and ev.get("function") in SYNC_FUNCTIONS \
                and isinstance(ev.get("retval"), int) and ev["retval"] < 0 \
                and (ev.get("unsynced_writes") or {}).get("count"):
            return [self._lost(ev)]
        return ()

    def _pid_of(self, ev: dict) -> int | None:
        """The client process behind a call: its credentials, else its connection's SETVOLUME
        (calls the client makes by itself, such as re-opening fds, carry pid 0)."""
        pid = (ev.get("cred") or {}).get("pid")
        if pid:
            return pid
        process = self.state.clients.process(ev)
        return process.pid if process is not None and process.translator else None

    def _lost(self, ret: dict) -> dict:
        tally = ret["unsynced_writes"]
        call = self.last_call.get((ret.get("pid"), ret.get("tid"))) or {}
        path = (call.get("args") or {}).get("path")
        pid = ret.get("pid")
        since = tally.get("first_time_ns", ret["time_ns"]) - MARGIN_NS
        wire = [(c, r) for c, r in self.failed_writes
                if since <= r["time_ns"] <= ret["time_ns"] and self._pid_of(c or r) in (pid, None)
                and (path is None or self.state.files.path((c.get("args") or {}).get("gfid")) in (path, "?")
                     or self.state.files.path((c.get("args") or {}).get("gfid")).startswith("gfid:"))]
        name = path or "a file opened before the probes started"
        where = ""
        if tally.get("offset_lo") is not None:
            where = f" at offsets {tally['offset_lo']}-{tally['offset_hi']}"
        errno = ret.get("errno_name") or "an error"
        wire_text = ""
        if wire:
            c, r = wire[0]
            wire_text = (f" On the wire the WRITE{'s' if len(wire) > 1 else ''} carrying it failed: "
                         f"{len(wire)} WRITE repl{'ies' if len(wire) > 1 else 'y'} with "
                         f"{r.get('errno_name')} from {r.get('src')} (gfid "
                         f"{(c.get('args') or {}).get('gfid')}).")
        evidence = [e for e in (call, ret) if e] + [e for pair in wire[:5] for e in pair if e]
        return self.finding(
            ret["time_ns"], severity="critical",
            title=f"acknowledged data lost: {tally['bytes']} bytes written to {name} by pid {pid} "
                  f"({ret.get('comm')})",
            explanation=(f"pid {pid} ({ret.get('comm')}) wrote {tally['bytes']} bytes in "
                         f"{tally['count']} call{'s' if tally['count'] > 1 else ''}{where} to {name}; "
                         "glfs acknowledged every one (write-behind returned success before the "
                         "data reached a brick)." + wire_text + f" Then {ret.get('function')} "
                         f"returned -1 with {errno}: the acknowledged data was never stored. "
                         "Unless the application treats that failure as loss and writes again, "
                         "the data is gone."),
            remedy=("Treat a failed fsync/close as lost data: re-open the file and write it "
                    "again. For data that must not be lost, fsync after each write (or open "
                    "with O_SYNC), or turn write-behind off for the volume "
                    "(`gluster volume set VOL performance.write-behind off`). Fix why the "
                    "WRITE failed: " + _cause(wire)),
            evidence=evidence, key=f"lost-write:{pid}:{path}", path=path, pid=pid,
            lost_bytes=tally["bytes"])


def _cause(wire: list[tuple[dict, dict]]) -> str:
    errnos = {r.get("errno_name") for _, r in wire}
    if errnos & {"ENOSPC", "EDQUOT"}:
        return "the brick refused it for space or quota (see the no-space finding)."
    if errnos & {"ENOENT", "ESTALE"}:
        return "the file was gone on the brick (see the stale-handle finding)."
    return "see the other findings of this run and the brick log."


@hookimpl
def correlate_detectors(state):
    return [LostWrite(state)]
