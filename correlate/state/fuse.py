"""FUSE requests joined to the wire: for a request the `fuse` probes sent (`fuse.reply`, a
failed or slow one, or `fuse.pending`, one still waiting), the RPCs the glusterfs client
sent for it and what the bricks answered.

The join has no key to rely on: no FUSE `unique` reaches the wire. The glusterfs FUSE client
copies the request header's pid (the requesting *thread*) into the RPC credential, so the
join is by credential pid == the request's tid, with the call sent between the request's
send and its end. Where it is uncertain, `FuseJoin.uncertain` says why:
- tid 0 or a request sent from another thread than its requester (writeback, readahead and
  RELEASE come from kernel threads; the client's own calls carry pid 0 or its own pid):
  nothing on the wire carries the thread;
- a request sent before the probes started (no send time): the window is a guess;
- several threads of one program with the same tid over time (tids are reused) or the same
  thread's asynchronous requests overlapping: calls may belong to a neighbour;
- a request that failed with no RPC in its window: the client made the error itself (a
  brick it knows to be down, split-brain, write-behind reporting an earlier write), so the
  wire evidence is the brick's state (a close by the brick, PORTBYBRICK answering -1), not
  a reply;
- one FUSE LOOKUP fans out to several wire LOOKUPs (about nine on a 2-brick distribute
  volume): all are listed, the failing ones first.

The state keeps only references to recent events (bounded, oldest dropped): the credential
of a call is decoded (with_details) only when a FUSE request asks for the join.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ..events import with_details

MAX_RECENT = 8192              # recent GlusterFS calls and replies kept for the join
MAX_BRICK_MARKS = 256          # bricks whose last "down" mark is kept
SLACK_NS = 2_000_000           # clock error between probe time and capture time
UNSTARTED_WINDOW_NS = 1_000_000_000   # a request without send time: look this far back
DOWN_MARK_NS = 600_000_000_000        # a brick's down mark counts for ten minutes
MAX_JOINED = 64                # calls listed per request
GLUSTERFS = "GlusterFS"


@dataclass(frozen=True)
class FuseJoin:
    request: dict                   # the fuse.reply or fuse.pending event
    calls: tuple[dict, ...]         # the requester thread's RPC calls while it ran
    replies: tuple[dict, ...]       # their replies (failed ones first)
    unanswered: tuple[dict, ...]    # calls without a reply when the join was made
    down_bricks: tuple[dict, ...]   # wire marks of bricks down (server close, PORTBYBRICK -1)
    uncertain: tuple[str, ...]      # why the join may be wrong

    @property
    def program(self) -> str:
        r = self.request
        comm, pid, tid = r.get("comm") or "?", r.get("pid"), r.get("tid")
        if pid is None:
            return f"{comm} (thread {tid})" if tid else "the kernel (no requesting thread)"
        return f"{comm} (pid {pid}" + (f", thread {tid})" if tid != pid else ")")

    @property
    def path(self) -> str | None:
        """The request's path from the probes, else the name its wire LOOKUP/CREATE named."""
        if self.request.get("path"):
            return self.request["path"]
        for call in self.calls:
            args = call.get("args") or {}
            if call.get("procedure") in ("LOOKUP", "CREATE", "MKDIR", "MKNOD") and args.get("bname"):
                mount = self.request.get("mount") or ""
                return f"{mount}/.../{args['bname']}"
        return None

    @property
    def failed_replies(self) -> tuple[dict, ...]:
        """Replies that failed, bar a LOOKUP's ENOENT (a name not there yet: everyday)."""
        return tuple(r for r in self.replies if isinstance(r.get("op_ret"), int) and r["op_ret"] < 0
                     and not (r.get("procedure") == "LOOKUP" and r.get("errno_name") == "ENOENT"))


class FuseRequests:
    """Read-only to detectors: `join(event)` for a fuse.reply / fuse.pending event."""

    def __init__(self, clients=None):
        self.clients = clients              # state.clients: the brick behind a connection
        self._recent: deque[dict] = deque(maxlen=MAX_RECENT)
        self._down: OrderedDict[str, dict] = OrderedDict()   # brick -> last down mark
        self.requests = 0                   # FUSE requests joined

    def expect_requests(self, expected: bool) -> None:
        """Whether an input can bring FUSE requests; when none can (captures and logs only)
        no RPC is kept for joins (on a busy capture the 8,192 kept were the largest thing
        held, 13 MiB, and the collector walked them all along)."""
        self._recent = deque(self._recent, maxlen=MAX_RECENT if expected else 0)

    def observe(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind in ("rpc.call", "rpc.reply"):
            if ev.get("program") == GLUSTERFS:
                self._recent.append(ev)
            elif ev.get("procedure") == "PORTBYBRICK" and kind == "rpc.reply":
                self._portmap(ev)
        elif kind == "tcp.close" and ev.get("by") == "server" and self.clients is not None:
            process = self.clients.process(ev)
            if process is not None and process.brick:
                self._mark(process.brick, ev)

    def _portmap(self, ev: dict) -> None:
        ev = with_details(ev)    # rare (a client (re)connecting): its port is worth decoding
        brick = (ev.get("args") or {}).get("brick")
        port = (ev.get("result") or {}).get("port")
        if isinstance(brick, str) and (ev.get("op_ret") == -1 or port == 0):
            host = (ev.get("src") or "").rsplit(":", 1)[0]
            self._mark(f"{host}:{brick}", ev)
        elif isinstance(brick, str):     # the brick signed in again
            self._down.pop(f"{(ev.get('src') or '').rsplit(':', 1)[0]}:{brick}", None)

    def _mark(self, brick: str, ev: dict) -> None:
        self._down[brick] = ev
        self._down.move_to_end(brick)
        if len(self._down) > MAX_BRICK_MARKS:
            self._down.popitem(last=False)

    def brick_of(self, ev: dict) -> str | None:
        """host:path of the brick behind an RPC's connection, when its SETVOLUME was seen."""
        process = self.clients.process(ev) if self.clients is not None else None
        return process.brick if process is not None and process.brick else None

    def join(self, req: dict) -> FuseJoin:
        self.requests += 1
        uncertain = []
        tid, end = req.get("tid"), req.get("time_ns", 0)
        start = req.get("call_time_ns")
        if start is None:
            start = end - UNSTARTED_WINDOW_NS
            uncertain.append("the request was sent before the probes started: its RPCs are "
                             "looked for in the second before its end")
        if not tid:
            uncertain.append("the request carries no requesting thread (kernel writeback, "
                             "readahead or release): no RPC can be tied to it")
        elif req.get("pid") is None:
            uncertain.append(f"thread {tid} was gone when the request was seen: its program is unknown")
        lo, hi = start - SLACK_NS, end + SLACK_NS
        calls, replies, answered = [], [], set()
        if tid:
            for ev in self._recent:
                t = ev.get("time_ns", 0)
                if t < lo or t > hi:
                    continue
                full = with_details(ev)
                cred = full.get("cred")
                if not isinstance(cred, dict) or cred.get("pid") != tid:
                    continue
                if ev.get("kind") == "rpc.call" and len(calls) < MAX_JOINED:
                    calls.append(full)
                elif ev.get("kind") == "rpc.reply" and len(replies) < MAX_JOINED:
                    replies.append(full)
                    answered.add((ev.get("source"), ev.get("conn"), ev.get("xid")))
        unanswered = [c for c in calls if (c.get("source"), c.get("conn"), c.get("xid")) not in answered]
        replies.sort(key=lambda r: (not (isinstance(r.get("op_ret"), int) and r["op_ret"] < 0),
                                    r.get("time_ns", 0)))
        if tid and not calls and req.get("errno"):
            uncertain.append("no RPC of this thread crossed the wire while the request ran: "
                             "the client made the error itself")
        if len({c.get("procedure") for c in calls if c.get("procedure") == "LOOKUP"}) and \
                sum(c.get("procedure") == "LOOKUP" for c in calls) > 1:
            uncertain.append("the client looks a name up on several bricks (DHT): all its "
                             "LOOKUPs are listed")
        down = tuple(ev for ev in self._down.values() if 0 <= end - ev.get("time_ns", 0) <= DOWN_MARK_NS)
        return FuseJoin(req, tuple(calls), tuple(replies), tuple(unanswered), down, tuple(uncertain))

    def recent_failed(self, procedures: frozenset, errnos: frozenset, before_ns: int,
                      within_ns: int = 60_000_000_000) -> tuple[dict, ...]:
        """Failed replies of any caller (the client re-opens fds with its own pid, not the
        application's) to `procedures` with an errno in `errnos`, in the `within_ns` before
        `before_ns`, as far back as the kept events reach."""
        return tuple(ev for ev in self._recent
                     if ev.get("kind") == "rpc.reply" and ev.get("procedure") in procedures
                     and ev.get("errno_name") in errnos
                     and 0 <= before_ns - ev.get("time_ns", 0) <= within_ns)

    def down_marks(self) -> tuple[dict, ...]:
        return tuple(self._down.values())
