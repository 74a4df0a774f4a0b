"""lock-wait: blocking lock requests that waited long, with the holder they waited for; and
lock contention storms (INODELK_CONTENTION callbacks, EAGAIN on non-blocking locks) per file.

A blocking request (LK with F_SETLKW, INODELK/FINODELK with F_SETLKW, ENTRYLK/FENTRYLK with
ENTRYLK_LOCK) gets its reply only once the lock is granted. The holder is the lock granted
earlier on the same brick, gfid and domain (and entry name) to another owner (connection and
lk_owner) and not yet released when the waiter asked; if the capture began after the holder
got it, the owner that released that lock during the wait is named instead.

Wait times are the capture's own: reply time minus call time. Lock procedures are not
latency evidence for slow-brick; here they are the subject.
"""
from __future__ import annotations

from collections import Counter

from correlate import hookimpl
from correlate.detector import END_OF_INPUT, Detector, Wants
from correlate.state import GlusterState

from .gluster_facts import is_blocking_lock

DEFAULT_AFTER_NS = 1_000_000_000
STORM_MIN = 50               # contention callbacks or EAGAIN replies on one file to report
MAX_TRACKED = 50_000         # pending calls, held locks, files counted: oldest dropped first

# glusterfs_lk_cmds_t / glusterfs_lk_types_t (glusterfs.h); entrylk_cmd / entrylk_type
GF_LK_SETLK, GF_LK_SETLKW, GF_LK_RESLK_LCKW = 1, 2, 4
GF_LK_F_RDLCK, GF_LK_F_WRLCK, GF_LK_F_UNLCK = 0, 1, 2
ENTRYLK_LOCK, ENTRYLK_UNLOCK, ENTRYLK_LOCK_NB = 0, 1, 2   # blocking: gluster_facts.is_blocking_lock
ENTRYLK_RDLCK = 0

POSIX = {"LK"}
INODE = {"INODELK", "FINODELK"}
ENTRY = {"ENTRYLK", "FENTRYLK"}
LOCK_PROCEDURES = POSIX | INODE | ENTRY
CONTENTION = {"INODELK_CONTENTION", "ENTRYLK_CONTENTION"}


def _is_unlock(call: dict) -> bool:
    args = call.get("args") or {}
    if call.get("procedure") in ENTRY:
        return args.get("cmd") == ENTRYLK_UNLOCK
    return args.get("type") == GF_LK_F_UNLCK


def _takes_lock(call: dict) -> bool:
    """A request that, when it succeeds, leaves a lock held (not a test, not an unlock)."""
    cmd = (call.get("args") or {}).get("cmd")
    if call.get("procedure") in ENTRY:
        return cmd in (ENTRYLK_LOCK, ENTRYLK_LOCK_NB)
    return cmd in (GF_LK_SETLK, GF_LK_SETLKW, GF_LK_RESLK_LCKW) and not _is_unlock(call)


def _shared(call: dict) -> bool:
    args = call.get("args") or {}
    if call.get("procedure") in ENTRY:
        return args.get("type") == ENTRYLK_RDLCK
    return args.get("type") == GF_LK_F_RDLCK


def _resource(call: dict) -> tuple:
    """What a lock is on: brick, gfid, kind, domain and entry name."""
    args = call.get("args") or {}
    proc = call.get("procedure")
    kind = "posix" if proc in POSIX else "inode" if proc in INODE else "entry"
    return (call.get("source"), call.get("dst"), args.get("gfid"), kind,
            args.get("volume") or "", args.get("name") or "" if kind == "entry" else "")


def _range(call: dict) -> tuple[int, int]:
    flock = (call.get("args") or {}).get("flock") or {}
    start, length = flock.get("start") or 0, flock.get("len") or 0
    return start, (start + length if length else 1 << 64)


def _owner(call: dict) -> tuple:
    """A lock's owner: the client connection and its lk_owner (flock's, else the caller's)."""
    flock = (call.get("args") or {}).get("flock") or {}
    lk_owner = flock.get("lk_owner") or (call.get("cred") or {}).get("lk_owner") or ""
    return (call.get("source"), call.get("conn"), lk_owner)


def _put(table: dict, key, value) -> None:
    table[key] = value
    if len(table) > MAX_TRACKED:
        table.pop(next(iter(table)))


class LockWait(Detector):
    id = "lock-wait"
    # Lock calls' args and credentials (owner, pid) and the contention callbacks' gfid; the
    # bricks', clients' and files' names are the shared state's (a finding says which file,
    # not only its gfid). A request still waiting at the end is judged by the input's last
    # event, of any kind: due/tick follow time.
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close"},
                  procedures=LOCK_PROCEDURES | CONTENTION,
                  details=LOCK_PROCEDURES | CONTENTION)

    def __init__(self, after_ns: int = DEFAULT_AFTER_NS, storm_min: int = STORM_MIN,
                 state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.after_ns = after_ns
        self.storm_min = storm_min
        self.calls: dict[tuple, dict] = {}        # (source, conn, xid) -> lock call
        self.waiting: dict[tuple, dict] = {}      # (source, conn, xid) -> {call, holders}
        self.held: dict[tuple, list[dict]] = {}   # resource -> granted locks not released
        self.released: dict[tuple, dict] = {}     # resource -> last release {lock, time_ns}
        self.storms: dict[str, Counter] = {}      # gfid -> Counter(what)
        self.storm_example: dict[str, dict] = {}
        self.last_ns = 0                          # the input's last event: its "now" at the end

    # -- events ------------------------------------------------------------------------
    def observe(self, ev):
        kind = ev.get("kind")
        self.last_ns = max(self.last_ns, ev.get("time_ns") or 0)
        if kind == "rpc.call":
            proc = ev.get("procedure")
            if proc in LOCK_PROCEDURES:
                self._call(ev)
            elif proc in CONTENTION:
                self._storm((ev.get("args") or {}).get("gfid"), f"{proc} callbacks", ev)
        elif kind == "rpc.reply":
            if ev.get("procedure") in LOCK_PROCEDURES:
                return self._reply(ev)
        elif kind == "tcp.close":
            self._disconnected(ev)
        return ()

    def due(self) -> int | None:
        """While a request waits, the input's last event is its "now" at the end."""
        return END_OF_INPUT if self.waiting else None

    def tick(self, now: int):
        self.last_ns = max(self.last_ns, now)
        return ()

    def _call(self, call: dict) -> None:
        key = (call.get("source"), call.get("conn"), call.get("xid"))
        _put(self.calls, key, call)
        if _is_unlock(call):
            self._release(call)
        elif is_blocking_lock(call):
            _put(self.waiting, key, {"call": call, "holders": self._conflicting(call)})

    def _reply(self, reply: dict):
        key = (reply.get("source"), reply.get("conn"), reply.get("xid"))
        call = self.calls.pop(key, None)
        wait = self.waiting.pop(key, None)
        if call is None:
            return ()
        if reply.get("op_ret") == 0 and _takes_lock(call):
            locks = self.held.setdefault(_resource(call), [])
            locks.append({"call": call, "granted_ns": reply["time_ns"], "owner": _owner(call)})
            if len(self.held) > MAX_TRACKED:
                self.held.pop(next(iter(self.held)))
        elif reply.get("errno_name") == "EAGAIN":
            self._storm((call.get("args") or {}).get("gfid"),
                        f"{call.get('procedure')} EAGAIN replies", reply)
        if wait is None or reply.get("latency_ns") is None or reply["latency_ns"] < self.after_ns:
            return ()
        return [self._waited(wait, reply)]

    def _conflicting(self, call: dict) -> list[dict]:
        owner, (lo, hi), shared = _owner(call), _range(call), _shared(call)
        out = []
        for lock in self.held.get(_resource(call), []):
            l_lo, l_hi = _range(lock["call"])
            if lock["owner"] == owner or l_hi <= lo or hi <= l_lo:
                continue
            if shared and _shared(lock["call"]):
                continue
            out.append(lock)
        return out

    def _release(self, call: dict) -> None:
        res, owner = _resource(call), _owner(call)
        locks = self.held.get(res, [])
        mine = [lock for lock in locks if lock["owner"] == owner]
        for lock in mine:
            lock["released_ns"] = call["time_ns"]
            locks.remove(lock)
        _put(self.released, res, {"owner": owner, "call": call, "time_ns": call["time_ns"],
                                  "lock": mine[0] if mine else None})
        if not locks:
            self.held.pop(res, None)

    def _disconnected(self, ev: dict) -> None:
        """A closed connection drops its client's locks (the brick releases them too)."""
        conn = (ev.get("source"), ev.get("conn"))
        for res in list(self.held):
            kept = [lock for lock in self.held[res] if lock["owner"][:2] != conn]
            for lock in self.held[res]:
                if lock["owner"][:2] == conn:
                    lock.setdefault("released_ns", ev["time_ns"])
            if kept:
                self.held[res] = kept
            else:
                del self.held[res]

    def _storm(self, gfid, what: str, ev: dict) -> None:
        if not gfid:
            return
        counts = self.storms.get(gfid)
        if counts is None:
            if len(self.storms) >= MAX_TRACKED:
                return
            counts = self.storms[gfid] = Counter()
            self.storm_example[gfid] = ev
        counts[what] += 1

    # -- findings ----------------------------------------------------------------------
    def _who(self, call: dict) -> str:
        label = self.state.topology.client_of(call)
        pid = (call.get("cred") or {}).get("pid")
        if pid and f"pid {pid}" not in label:
            label += f", caller pid {pid}"
        return f"{label} ({call.get('src')})"

    def _file(self, gfid) -> str:
        """`/dir/f (gfid G)` where the capture saw the file's name, else `gfid G`."""
        path = self.state.files.known_path(gfid)
        return f"{path} (gfid {gfid})" if path else f"gfid {gfid}"

    def _brick(self, call: dict) -> str:
        path = self.state.topology.brick(call.get("dst") or "")
        return f"{call.get('dst')}" + (f" {path}" if path else "")

    def _waited(self, wait: dict, reply: dict | None, now: int | None = None) -> dict:
        call = wait["call"]
        end = reply["time_ns"] if reply else now
        waited = end - call["time_ns"]
        args = call.get("args") or {}
        res = _resource(call)
        what = call.get("procedure") + (f" domain {args.get('volume')}" if args.get("volume") else "")
        holder_text, evidence, holder = "", [call], None
        if wait["holders"]:
            lock = wait["holders"][0]
            holder = self._who(lock["call"])
            released = lock.get("released_ns")
            holder_text = f" It waited for {holder}, which was granted that lock at {_clock(lock['granted_ns'])}"
            if not released:
                holder_text += " and still held it."
            elif reply:
                holder_text += (f" and released it at {_clock(released)}, "
                                f"{(end - released) / 1e6:.3f} ms before the grant.")
            else:
                holder_text += f" and asked to release it at {_clock(released)}."
            evidence.append(lock["call"])
        else:
            last = self.released.get(res)
            if last and last["owner"] != _owner(call) and last["time_ns"] >= call["time_ns"]:
                holder = self._who(last["call"])
                holder_text = (f" The lock was taken before the capture began; {holder} "
                               f"released it at {_clock(last['time_ns'])}, just before the grant.")
                evidence.append(last["call"])
            else:
                holder_text = " The holder is not in the capture (its lock was taken earlier)."
        if reply:
            evidence.append(reply)
        state = "waited" if reply else "is still waiting, at the end of the capture, after"
        gfid = args.get("gfid")
        path = self.state.files.known_path(gfid)
        return self.finding(
            end, severity="warning",
            title=f"lock wait: {call.get('procedure')} on {path or gfid} {state} "
                  f"{waited / 1e9:.3f} s",
            explanation=(f"{self._who(call)} asked brick {self._brick(call)} for a blocking "
                         f"{what} on {self._file(gfid)} at {_clock(call['time_ns'])} and "
                         f"{state} {waited / 1e9:.3f} s for it: the application is blocked on a "
                         f"lock another client holds, not on a hung brick.{holder_text}"),
            remedy=("Find why the holder keeps the lock (a long critical section, a stuck "
                    "process: `gluster volume statedump VOL` lists granted and blocked locks "
                    "per brick); `gluster volume clear-locks` frees a lock whose owner is gone."),
            evidence=evidence, key=f"wait:{res[1]}:{args.get('gfid')}:{res[3]}:{res[4]}",
            waiter=self._who(call), holder=holder, brick=self._brick(call), wait_ns=waited,
            gfid=gfid, path=path or (f"gfid:{gfid}" if gfid else None), still_waiting=reply is None)

    def finish(self):
        found = []
        for w in self.waiting.values():
            if self.state.loss.reply_may_be_lost(w["call"]):
                continue        # the grant may lie in a capture gap: see capture-loss
            if self.last_ns - w["call"]["time_ns"] >= self.after_ns:
                found.append(self._waited(w, None, self.last_ns))
        for gfid, counts in self.storms.items():
            total = sum(counts.values())
            if total < self.storm_min:
                continue
            parts = ", ".join(f"{n} {what}" for what, n in counts.most_common())
            path = self.state.files.known_path(gfid)
            found.append(self.finding(
                self.storm_example[gfid]["time_ns"], severity="info",
                title=f"lock contention on {path or f'gfid {gfid}'}: {total} events",
                explanation=(f"Clients competed for locks on {self._file(gfid)}: {parts}. Each "
                             "contention callback asks a holder to release early; EAGAIN "
                             "means a non-blocking try failed (replication retries it "
                             "blocking). Many writers on one file serialize on it."),
                remedy=("Spread the writers over more files, or let one writer own the file; "
                        "on replica volumes check `cluster.eager-lock` and "
                        "`performance.write-behind` are on."),
                evidence=[self.storm_example[gfid]], key=f"storm:{gfid}", gfid=gfid,
                path=path or f"gfid:{gfid}"))
        return found


def _clock(time_ns: int) -> str:
    from correlate.outputs.terminal import format_time
    return format_time(time_ns)


@hookimpl
def correlate_detectors(config, state):
    return [LockWait(after_ns=int(config.get("lock_wait_after_ns", DEFAULT_AFTER_NS)), state=state)]
