"""stale-handle: operations on an open file or a gfid handle failing with ESTALE or ENOENT
because the file is gone: another client unlinked or renamed it, or the brick restarted and
the client's re-open of its fds (OPEN by gfid) found nothing.

A client holds files by gfid. While the brick keeps its own fd open, writes still land in
the unlinked inode; once the brick restarts, the client re-opens by gfid and gets ESTALE,
and every later fd operation fails (ENOENT on anonymous-fd WRITEs, EBADFD in glfs_fstat).
ENOENT alone is common (a LOOKUP of a new name), so it counts here only on fd or handle
operations of a gfid some other client removed; ESTALE on them always does.

Only an operation that used an open file counts: an fd operation (READ, WRITE, FSTAT...),
the client's re-open of its fds by gfid after a reconnect, or an application the probes saw
get the error. An operation by gfid from the client's inode cache (OPEN, STAT, INODELK of a
path the application named) that meets a name another client removed is a race the client
settles itself (it looks the name up again and the application gets ENOENT, as POSIX
wants): counted, not a finding. So are the client process's own calls (pid 0) outside a
re-open.

Gluster's own daemons are not applications: the self-heal daemon, heal info, rebalance,
quota and geo-replication crawl by gfid and meet files that clients removed meanwhile (after
a brick restart, the heal crawl GETXATTRs every gfid the brick's index holds). Their ESTALE
and ENOENT are normal, never a finding; the shared state tells who made a call.

On a brick of a replica or disperse set, one brick's error reaches the application only
when its peers fail the same call too (or a probe saw the application get it): the error of
a restarted brick alone is the heal's business. A capture that lost the peers' replies tells
neither way, so such an error is reported only once a peer's failure of the same call is seen.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.events import with_details
from correlate.state import DAEMON, GlusterState

from .gluster_files import DETAILS as FILES_DETAILS

HANDLE_OPS = {"OPEN", "READ", "WRITE", "FSTAT", "FSYNC", "FLUSH", "FTRUNCATE", "FSETATTR",
              "FGETXATTR", "FSETXATTR", "FXATTROP", "FINODELK", "FENTRYLK", "LK", "FALLOCATE",
              "DISCARD", "ZEROFILL", "SEEK", "RCHECKSUM", "READDIR", "READDIRP", "STAT",
              "SETATTR", "GETXATTR", "SETXATTR", "TRUNCATE", "ACCESS", "OPENDIR", "XATTROP",
              "INODELK"}
# Operations on an open fd (the call carries one): the rest of HANDLE_OPS name a gfid.
FD_OPS = {"READ", "WRITE", "FSTAT", "FSYNC", "FLUSH", "FTRUNCATE", "FSETATTR", "FGETXATTR",
          "FSETXATTR", "FXATTROP", "FINODELK", "FENTRYLK", "LK", "FALLOCATE", "DISCARD",
          "ZEROFILL", "SEEK", "RCHECKSUM", "READDIR", "READDIRP"}
REOPEN_OPS = {"OPEN", "OPENDIR"}
REMOVING = {"UNLINK", "RENAME", "RMDIR"}
ESTALE, ENOENT, EBADFD = 116, 2, 77
MAX_TRACKED = 50_000
# A replicated client sends each fop to every brick of the set at once: a reply of a peer
# within this window answers the same call.
PEER_WINDOW_NS = 1_000_000_000
MAX_RECENT = 8192          # successful replies kept for that look (calls lean, not decoded)


class StaleHandle(Detector):
    id = "stale-handle"
    # Details: the removing calls' names (file names, clients and the calls a reply answers
    # are the shared state's; the naming replies still wake it as before). A handle operation's call
    # (its gfid and pid) is read only when its reply failed: decoded then (with_details), so
    # the everyday READs and WRITEs are not decoded for it.
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close", "probe.call", "probe.return"},
                  procedures=HANDLE_OPS | REMOVING | FILES_DETAILS,
                  details=REMOVING)

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.removed: dict[str, tuple[dict, dict]] = {}   # gfid -> (call, reply) that removed it
        # (parent gfid, name) -> (call, reply) that removed it: for a name whose gfid the
        # capture never learned (looked up before it began)
        self.removed_names: dict[tuple, tuple[dict, dict]] = {}
        self.app: dict[int, list[dict]] = {}              # pid -> failing probe events
        self.last_call: dict[tuple, dict] = {}
        self.daemon_errors = 0                            # Gluster's own crawls: not findings
        self.name_races = 0         # by-gfid calls that met a removed name: not open files
        # The same call answered by another brick: the restarted brick of a replica set
        # lacks a file its peers have (heal pending); the client never sees that error.
        self.recent_ok: deque[tuple[int, dict]] = deque(maxlen=MAX_RECENT)   # (time, call)
        self.recent_failed: deque[tuple[int, dict]] = deque(maxlen=MAX_RECENT)
        # (conn, xid) -> (finding, call, deadline, whether a peer must be seen failing it)
        self.suspects: OrderedDict[tuple, tuple[dict, dict, int, bool]] = OrderedDict()
        self.peers_served = 0
        self.peers_unseen = 0      # one brick of a set failed; its peers' answers not seen

    def observe(self, ev):
        kind = ev.get("kind")
        found = self.tick(ev["time_ns"]) if self.suspects else []
        if kind == "rpc.reply" and ev.get("op_ret") == 0 and ev.get("procedure") in HANDLE_OPS:
            call = self.state.calls.call_of(ev)
            if call is not None:
                _keep_recent(self.recent_ok, ev["time_ns"], call)
                if self.suspects:
                    self._served(call)
        if kind == "rpc.reply" and ev.get("procedure") in REMOVING and ev.get("op_ret") == 0:
            call = self.state.calls.call_of(ev)
            args = (call or {}).get("args") or {}
            name = (args.get("pargfid") or args.get("oldgfid"), args.get("bname") or args.get("oldbname"))
            gfid = self.state.files.gfid_of(*name)
            if gfid:
                _remember(self.removed, gfid, (call, ev))
            if all(name):
                _remember(self.removed_names, name, (call, ev))
        elif kind == "probe.call":
            self.last_call[(ev.get("pid"), ev.get("tid"))] = ev
        elif kind == "probe.return" and ev.get("errno") in (ESTALE, ENOENT, EBADFD):
            call = self.last_call.get((ev.get("pid"), ev.get("tid")))
            self.app.setdefault(ev.get("pid"), []).extend(e for e in (call, ev) if e)
            del self.app[ev.get("pid")][:-20]
        elif kind == "rpc.reply" and ev.get("procedure") in HANDLE_OPS \
                and ev.get("errno_name") in ("ESTALE", "ENOENT"):
            call = self.state.calls.call_of(ev)
            if call is not None:
                _keep_recent(self.recent_failed, ev["time_ns"], call)
            found += self._stale(ev)
        return found

    def _stale(self, reply: dict) -> list[dict]:
        call = with_details(self.state.calls.call_of(reply) or {})
        gfid = (call.get("args") or {}).get("gfid")
        if not gfid:
            return []
        actor = self.state.actor(call)
        if actor.role == DAEMON:
            self.daemon_errors += 1
            return []
        removed = self.removed.get(gfid) or self.removed_names.get(self.state.files.names.get(gfid))
        remover = self.state.actor(removed[0]) if removed else None
        by_other = removed is not None and remover.pid != actor.pid
        reconnect = self.state.clients.reconnect(reply)
        # ENOENT is the brick's everyday answer for a gfid it does not have; it tells of a
        # stale handle only when another client removed that gfid.
        if reply.get("errno_name") == "ENOENT" and not by_other:
            return []
        if not self._used_open_file(call, actor):
            self.name_races += 1
            return []
        if call.get("procedure") in REOPEN_OPS and not self.app.get(actor.pid) \
                and self._redundant(reply):
            # the restarted brick of a replica/disperse set lacks the file (removed or made
            # while it was down): the client keeps the fd on its peers, the heal repairs it
            self.peers_served += 1
            return []
        path = self.state.files.path(gfid)
        if path.startswith("gfid:") and removed:
            args = removed[0].get("args") or {}
            path = self.state.files.name_path(args.get("pargfid") or args.get("oldgfid"),
                                        args.get("bname") or args.get("oldbname"))
        owner = actor.name
        causes, evidence = [], []
        if removed:
            rcall, rreply = removed
            causes.append(f"{remover.name} {rcall.get('procedure').lower()}ed {path} (a "
                          f"{rcall.get('procedure')} from {rcall.get('src')})")
            evidence += [rcall, rreply]
        if reconnect:
            closed, setvolume = reconnect
            process = self.state.clients.process(reply)
            brick = process.brick if process and process.brick else reply.get("src")
            causes.append(f"the brick {brick} closed the client's connection (it stopped or "
                          f"restarted) and the client reconnected (SETVOLUME from "
                          f"{setvolume.get('src')}), so its open fds had to be re-opened by gfid")
            evidence += [closed, setvolume]
        evidence += [call, reply] + self.app.get(actor.pid, [])[-6:]
        app_seen = [e for e in self.app.get(actor.pid, []) if e.get("kind") == "probe.return"]
        app = ""
        if app_seen:
            app = " The application got " + ", ".join(
                f"{e.get('errno_name')} from {e.get('function')}" for e in app_seen[-3:]) + "."
        if actor.role == "client":
            app += (" The call was the client process's own (re-opening the files its "
                    "applications had open after a reconnect): the applications holding "
                    f"{path} open get the error on their next use of it.")
        finding = self.finding(
            reply["time_ns"], severity="error",
            title=f"stale handle: {path} was removed under {owner}'s open file",
            explanation=(f"{owner} still used {path} (gfid {gfid}) through an open fd or handle: "
                         f"{call.get('procedure')} to {reply.get('src')} failed with "
                         f"{reply.get('errno_name')}. Why: " + ("; ".join(causes) or
                         "not in this capture (the file was removed, or the brick restarted, "
                         "before it began)") + "." + app),
            remedy=("The fd refers to a file that no longer exists under that name: the "
                    "application must close it and open the path again (and re-write what it "
                    "wrote since its last successful fsync). Coordinate the clients that "
                    "replace the file (a lock, or write a new file and rename it into place)."),
            evidence=evidence, key=f"stale-handle:{gfid}", gfid=gfid, path=path,
            client=owner, brick=(self.state.clients.process(reply) or None) and
            self.state.clients.process(reply).brick)
        if app_seen:
            return [finding]
        return self._hold(finding, call, reply, self._redundant(reply))

    # ---- answered by a peer: not the client's error -------------------------------------

    def _hold(self, finding: dict, call: dict, reply: dict, in_set: bool) -> list[dict]:
        """Report the finding unless another brick answered the same call (looked for
        PEER_WINDOW_NS before and after the failure); on a brick of a replica/disperse set,
        only once a peer is seen failing the same call."""
        now = reply["time_ns"]
        if any(now - t <= PEER_WINDOW_NS and _same_call(call, ok) for t, ok in self.recent_ok):
            self.peers_served += 1
            return []
        key = (reply.get("conn"), reply.get("xid"))
        self.suspects[key] = (finding, call, now + PEER_WINDOW_NS, in_set)
        if len(self.suspects) > MAX_RECENT:      # bounded: the oldest is judged at once
            return self._judge(*self.suspects.popitem(last=False)[1])
        return []

    def _judge(self, finding: dict, call: dict, deadline: int, in_set: bool) -> list[dict]:
        """A held finding whose peers did not answer the call: reported, unless its brick
        is one of a set and no peer was seen failing the call either."""
        if in_set and not any(deadline - t <= 2 * PEER_WINDOW_NS and _same_call(call, failed)
                              for t, failed in self.recent_failed):
            self.peers_unseen += 1
            return []
        return [finding]

    def _served(self, ok: dict) -> None:
        for key, (_, call, _, _) in list(self.suspects.items()):
            if _same_call(call, ok):
                del self.suspects[key]
                self.peers_served += 1

    def _redundant(self, reply: dict) -> bool:
        process = self.state.clients.process(reply)
        if process is not None and ":" in process.brick:
            host, path = process.brick.split(":", 1)
        else:   # the connection's SETVOLUME is not in the capture (lost, or before it began):
            endpoint = reply.get("src")     # the brick served at that port, as others saw it
            path = self.state.topology.brick(endpoint) if isinstance(endpoint, str) else None
            if path is None:
                return False
            host = endpoint.rpartition(":")[0]
        return self.state.bricks.set_of(host, path) is not None

    def due(self) -> int | None:
        return next(iter(self.suspects.values()))[2] if self.suspects else None

    def tick(self, now: int) -> list[dict]:
        found = []
        while self.suspects:
            key, held = next(iter(self.suspects.items()))
            if now < held[2]:
                break
            del self.suspects[key]
            found += self._judge(*held)
        return found

    def finish(self):
        found = [f for held in self.suspects.values() for f in self._judge(*held)]
        self.suspects.clear()
        return found

    def _used_open_file(self, call: dict, actor) -> bool:
        """Whether the failing call used an open file: an fd operation, a re-open (an OPEN
        that is the client process's own call: pid 0, or the FUSE client's pid), or an
        application the probes saw fail."""
        if call.get("procedure") in FD_OPS:
            return True
        cred = call.get("cred")
        pid = cred.get("pid") if isinstance(cred, dict) else None
        process = self.state.clients.process(call)
        fuse_own = process is not None and process.process_name == "fuse" and pid == process.pid
        if call.get("procedure") in REOPEN_OPS and (pid == 0 or fuse_own):
            return True         # the client re-opening an fd (after a reconnect, or a seen one)
        return any(e.get("kind") == "probe.return" for e in self.app.get(actor.pid, ()))

    def drops(self) -> dict[str, int]:
        return {"ESTALE/ENOENT replies to Gluster's own daemons (heal, rebalance, quota "
                "crawls: normal, not findings)": self.daemon_errors,
                "ESTALE/ENOENT replies to calls by gfid on a name another client removed (a "
                "race the client settles by looking it up again, no open file)": self.name_races,
                "ESTALE/ENOENT replies of one brick of a replica/disperse set whose peers "
                "answered the same call or keep the fd (a restarted brick without a file its "
                "peers have: heal pending, the client saw no error)": self.peers_served,
                "ESTALE/ENOENT replies of one brick of a replica/disperse set whose peers' "
                "answers to the same call the capture did not show (the client saw an error "
                "only if they failed too)": self.peers_unseen}


def _same_call(failed: dict, ok: dict) -> bool:
    """`ok` (a call answered without error, lean) is the call `failed` (decoded) sent to
    another brick: same procedure, gfid and credential pid, another connection."""
    if ok.get("procedure") != failed.get("procedure") or ok.get("conn") == failed.get("conn"):
        return False
    ok = with_details(ok)
    return ((ok.get("args") or {}).get("gfid") == (failed.get("args") or {}).get("gfid")
            and (ok.get("cred") or {}).get("pid") == (failed.get("cred") or {}).get("pid"))


def _keep_recent(recent: deque, now: int, call: dict) -> None:
    """Only the last 2 s are ever looked at (a reply's peers within PEER_WINDOW_NS, or by
    a suspect judged PEER_WINDOW_NS later): older calls are let go, not held to MAX_RECENT
    (on a busy capture 8,192 calls with their records were the largest thing held)."""
    while recent and recent[0][0] < now - 2 * PEER_WINDOW_NS:
        recent.popleft()
    recent.append((now, call))


def _remember(table: dict, key, value) -> None:
    table.pop(key, None)
    table[key] = value
    if len(table) > MAX_TRACKED:
        table.pop(next(iter(table)))


@hookimpl
def correlate_detectors(state):
    return [StaleHandle(state)]
