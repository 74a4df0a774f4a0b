"""no-space: ENOSPC and EDQUOT replies, per brick, with the reason the brick gives.

A STATFS reply of the same brick tells the three apart, as Gluster's posix layer fills it:
- EDQUOT is the quota translator's: a directory reached its `quota limit-usage`.
- `storage.reserve`: below the reserve, posix answers STATFS with f_bfree and f_bavail both
  exactly 0 (it subtracts the reserve and clamps), and refuses WRITE, CREATE, MKDIR... with
  ENOSPC while the disk itself still has space. A really full file system keeps its
  root-reserved blocks in f_bfree (ext4) or a few free blocks: not both zero.
- f_ffree 0: out of inodes, with blocks to spare.
The finding waits for a STATFS of that brick (the client asks at mount and on statvfs/df)
up to WAIT_FOR_STATFS_NS of the events' clock, so live runs speak soon after the first error.
"""
from __future__ import annotations

from collections import OrderedDict

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState

from .gluster_facts import clock, find_key, host_of, port_of

WAIT_FOR_STATFS_NS = 3_000_000_000
FULL_FRACTION = 0.01             # under 1% of blocks available: really full
MAX_BRICKS = 4096
MAX_EXAMPLES = 6
# Error replies every volume gives in normal operation: not a sign of fault injection.
ROUTINE_ERRNOS = frozenset(("ENOENT", "ENODATA", "EEXIST", "EAGAIN", "ESTALE", "ENOTEMPTY",
                            "ENOTCONN", "ENOSPC", "EDQUOT"))


class _Brick:
    __slots__ = ("server", "errors", "count", "procedures", "statfs", "first_ns", "reported")

    def __init__(self, server: str):
        self.server = server
        self.errors: list[dict] = []          # examples, bounded
        self.count = 0
        self.procedures: dict[str, int] = {}
        self.statfs: dict | None = None       # the latest STATFS reply of this brick
        self.first_ns: int | None = None
        self.reported = False


class NoSpace(Detector):
    id = "no-space"
    # An error reply of any procedure; details: STATFS's counts (the brick's name is the
    # shared state's). A brick still without a STATFS is reported by time passing: due/tick.
    wants = Wants(kinds={"rpc.reply"}, procedures={"STATFS"}, failures=True, details={"STATFS"})

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()    # brick paths, volumes
        self.bricks: OrderedDict[tuple[str, str], _Brick] = OrderedDict()  # (server, errno) -> state
        self.statfs: OrderedDict[str, dict] = OrderedDict()   # server -> latest STATFS reply
        self.waiting: OrderedDict[tuple[str, str], _Brick] = OrderedDict()
        # server -> {errno: count} of the other, unusual errors it answered (fault injection
        # gives a brick many kinds at once)
        self.other_errors: OrderedDict[str, dict[str, int]] = OrderedDict()

    @staticmethod
    def _put(table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_BRICKS:
            table.popitem(last=False)

    def observe(self, ev):
        kind = ev.get("kind")
        found = []
        if kind == "rpc.reply":
            server = ev.get("src")
            if ev.get("procedure") == "STATFS" and ev.get("op_ret") == 0:
                self._put(self.statfs, server, ev)
                for key in [k for k in self.waiting if k[0] == server]:
                    found.append(self._report(self.waiting.pop(key), ev["time_ns"]))
            elif ev.get("op_ret") == -1 and ev.get("errno_name") in ("ENOSPC", "EDQUOT"):
                found += self._error(server, ev)
            elif ev.get("op_ret") == -1 and isinstance(ev.get("errno_name"), str) \
                    and ev["errno_name"] not in ROUTINE_ERRNOS:
                counts = self.other_errors.get(server) or {}
                counts[ev["errno_name"]] = counts.get(ev["errno_name"], 0) + 1
                self._put(self.other_errors, server, counts)
        found += self._timed_out(ev["time_ns"])
        return found

    def _error(self, server: str, ev: dict) -> list[dict]:
        key = (server, ev["errno_name"])
        st = self.bricks.get(key)
        if st is None:
            st = _Brick(server)
            st.first_ns = ev["time_ns"]
            self._put(self.bricks, key, st)
        st.count += 1
        proc = ev.get("procedure") or "?"
        st.procedures[proc] = st.procedures.get(proc, 0) + 1
        if len(st.errors) < MAX_EXAMPLES:
            st.errors.append(ev)
        if st.reported:
            return [self._report(st, ev["time_ns"])]   # folded into the first by its key
        if ev["errno_name"] == "EDQUOT" or server in self.statfs:
            return [self._report(st, ev["time_ns"])]
        self.waiting[key] = st
        return []

    def due(self) -> int | None:
        """When the first error still waiting for its brick's STATFS stops waiting."""
        if not self.waiting:
            return None
        return next(iter(self.waiting.values())).first_ns + WAIT_FOR_STATFS_NS

    def tick(self, now: int):
        return self._timed_out(now)

    def _timed_out(self, now: int) -> list[dict]:
        found = []
        while self.waiting:
            key, st = next(iter(self.waiting.items()))
            if now - st.first_ns < WAIT_FOR_STATFS_NS:
                break
            del self.waiting[key]
            found.append(self._report(st, now))
        return found

    def finish(self):
        found = [self._report(st, st.first_ns) for st in self.waiting.values()]
        self.waiting.clear()
        return found

    # ---- the finding ---------------------------------------------------------------------

    def _report(self, st: _Brick, now: int) -> dict:
        st.reported = True
        errno_name = st.errors[0]["errno_name"]
        server = st.server
        path = self.state.topology.brick(server)
        brick = f"{host_of(server)}:{path} (port {port_of(server)})" if path else f"the brick at {server}"
        volume = self.state.topology.volume_of.get(server, "VOLNAME")
        statfs = self.statfs.get(server) if errno_name == "ENOSPC" else None
        cause, why, remedy = _diagnose(errno_name, statfs, brick, volume, path,
                                       self.other_errors.get(server) or {})
        procs = ", ".join(f"{p} x{n}" for p, n in sorted(st.procedures.items(), key=lambda i: -i[1]))
        explanation = (f"{brick} answered {st.count} call(s) with {errno_name}: {procs}. {why}")
        evidence = list(st.errors) + ([statfs] if statfs else [])
        return self.finding(
            now, severity="error", title=f"{cause} on {brick}", explanation=explanation,
            remedy=remedy, evidence=evidence, key=f"{errno_name}:{server}", cause=cause,
            server=server, brick=path)


def _diagnose(errno_name: str, statfs: dict | None, brick: str, volume: str,
              path: str | None, others: dict[str, int]) -> tuple[str, str, str]:
    """(cause, explanation, remedy) for the errno, the brick's STATFS reply and the other
    unusual errors the same brick answered."""
    where = path or "the brick directory"
    if errno_name == "EDQUOT":
        return ("quota limit reached",
                "EDQUOT comes from Gluster's quota: a directory on the path reached its usage "
                "limit; the bricks themselves may have plenty of space.",
                f"`gluster volume quota {volume} list` shows which limit is hit; raise it "
                f"(`gluster volume quota {volume} limit-usage /DIR SIZE`) or remove data there.")
    st = find_key((statfs or {}).get("result") or {}, "statfs") if statfs else None
    if not isinstance(st, dict):
        return ("no space",
                "No STATFS reply of this brick was seen, so the capture cannot tell a full disk "
                "from storage.reserve (which refuses writes with space left).",
                f"On the brick host: `df -h {where}` and `df -i {where}`; "
                f"`gluster volume get {volume} storage.reserve`. Free space, lower the reserve, "
                "or add bricks.")
    blocks, bfree, bavail = st.get("blocks") or 0, st.get("bfree"), st.get("bavail")
    shown = (f"STATFS at {clock(statfs['time_ns'])} said blocks {blocks}, bfree {bfree}, "
             f"bavail {bavail}, ffree {st.get('ffree')} (block size {st.get('frsize') or st.get('bsize')}).")
    if st.get("ffree") == 0 and st.get("files"):
        return ("out of inodes",
                f"{shown} No free inodes: new files cannot be made although blocks are free.",
                f"`df -i {where}` on the brick host; remove small files, or grow the file "
                "system's inode table (xfs_growfs -m, or recreate it).")
    if blocks and bfree == 0 and bavail == 0:
        return ("storage.reserve refusing writes",
                f"{shown} Both free counts exactly 0 is what Gluster reports when the free space "
                "fell under `storage.reserve`: the brick refuses WRITE, CREATE and MKDIR with "
                "ENOSPC while its file system still has the reserved space free (a really full "
                "file system keeps its root-reserved blocks in bfree).",
                f"`gluster volume get {volume} storage.reserve` and `df -h {where}` on the brick "
                f"host. Lower the reserve (`gluster volume set {volume} storage.reserve N`, "
                "default 1%), or free or add space; the reserve exists so the brick can still "
                "write its metadata: do not set it to 0.")
    if blocks and bavail is not None and bavail < blocks * FULL_FRACTION:
        return ("brick full",
                f"{shown} Less than 1% of the file system is available: the brick is full.",
                f"Free space on {where} (`df -h`, `du`), add bricks and rebalance "
                f"(`gluster volume add-brick {volume} ...`, `gluster volume rebalance {volume} "
                "start`), or check for a file system grown by only one brick's data.")
    if others:
        listed = ", ".join(f"{e} x{n}" for e, n in sorted(others.items(), key=lambda i: -i[1])[:6])
        return ("ENOSPC with space left, among other errors",
                f"{shown} The brick still reports space, yet refused the call, and it also "
                f"answered {listed}: errors of several kinds from one brick with space left are "
                "what fault injection (`debug.error-gen`) makes; a quota limit or a "
                "`storage.reserve` given as a size are the other causes that refuse writes "
                "with space left.",
                f"`gluster volume get {volume} debug.error-gen` (reset it: `gluster volume "
                f"reset {volume} debug.error-gen`), `gluster volume quota {volume} list`, "
                f"`gluster volume get {volume} storage.reserve`, and the brick log around "
                "these times.")
    return ("ENOSPC with space left",
            f"{shown} The brick still reports space, yet refused the call: a `storage.reserve` "
            "given as a size, a quota limit, space used up after that STATFS, a file system "
            "limit, or fault injection (`debug.error-gen`).",
            f"`gluster volume get {volume} storage.reserve`, `gluster volume quota {volume} "
            f"list`, `gluster volume get {volume} debug.error-gen`, `df -h {where}` and "
            f"`df -i {where}` on the brick host, and the brick log around these times.")



@hookimpl
def correlate_detectors(state):
    return [NoSpace(state)]
