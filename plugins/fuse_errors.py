"""fuse-errors: an application on a FUSE mount got ENOTCONN, EIO or ESTALE (or a request of
its hangs), named with its program, the FUSE operation (and the system calls that make it),
the path and the errno, beside the wire evidence of why.

Needs the `fuse` probes (`--probe fuse`): the kernel's FUSE requests that failed or took
`slow_s` or more. The shared state (state.fuse) joins each request to the RPCs its thread
sent (the FUSE client puts the requesting thread's id in the RPC credential) and to the
bricks' state on the wire. The wire cause, by errno:
- ENOTCONN: a reply carrying it (the client failed the calls pending when a connection
  dropped), else the client made it itself for a brick it knows to be down: the wire shows
  the brick's connection closed by the brick or glusterd's PORTBYBRICK answering -1;
- EIO: a reply carrying it, else made in the client (split-brain: the split-brain detector
  names the copies that blame each other; a failed write reported at fsync or close);
- ESTALE, and ENOENT or EBADFD on an open file (what a FUSE application gets when another
  client replaced the file under its fd: ENOENT at fsync, EBADFD at fstat): the brick's
  reply, or the client's failed re-open of its fds after a reconnect (the stale-handle
  detector names the remover).
A request still unanswered after `slow_s` is a hung system call: named with the RPCs its
thread waits on and their bricks.

The system call: where the probes trace the requester's system calls, a failed request
that a call of the application sent (`in_syscall`) is held until that call's `fuse.syscall`
event (its name, path or fd, and the errno the program got; it ends microseconds after the
reply) or for SYSCALL_WAIT_NS; the two meet by (connection, unique). Without it (an older
recording, a kernel request) the call is named from the FUSE operation.
"""
from __future__ import annotations

from collections import OrderedDict

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants
from correlate.state import GlusterState

SYSCALL_WAIT_NS = 1_000_000_000   # a failed request waits this long for its system call
MAX_HELD = 1024                   # requests (and early system calls) held, oldest out
ERRNOS = {107: "ENOTCONN", 5: "EIO", 116: "ESTALE", 77: "EBADFD"}
# On an open file, ENOENT is no "no such name": the file went away under the fd
FD_OPS = frozenset({"READ", "WRITE", "FSYNC", "FLUSH", "FALLOCATE", "LSEEK", "SETLK", "SETLKW",
                    "GETLK", "COPY_FILE_RANGE"})
STALE = frozenset({"ESTALE", "ENOENT", "EBADFD"})
REOPEN = frozenset({"OPEN", "OPENDIR"})
# FUSE operation -> the system calls that send it (what the application called)
SYSCALLS = {"LOOKUP": "a path lookup (open, stat, access, ...)", "CREATE": "open(O_CREAT)/creat",
            "OPEN": "open", "READ": "read", "WRITE": "write", "FLUSH": "close",
            "FSYNC": "fsync/fdatasync", "GETATTR": "stat/fstat", "SETATTR":
            "chmod/chown/truncate/utimensat", "MKDIR": "mkdir", "MKNOD": "mknod", "UNLINK":
            "unlink", "RMDIR": "rmdir", "RENAME": "rename", "RENAME2": "renameat2",
            "LINK": "link", "SYMLINK": "symlink", "OPENDIR": "opendir",
            "READDIR": "getdents", "READDIRPLUS": "getdents", "STATFS": "statfs",
            "SETLK": "fcntl(F_SETLK)", "SETLKW": "fcntl(F_SETLKW)", "GETLK": "fcntl(F_GETLK)",
            "FALLOCATE": "fallocate", "ACCESS": "access", "SETXATTR": "setxattr",
            "GETXATTR": "getxattr", "RELEASE": "the last close (no caller waits for it)"}
REMEDY = {
    "ENOTCONN": "Bring the brick back (`gluster volume status VOL`, then `gluster volume "
                "start VOL force` for a dead brick; a hung one: find why it stopped answering "
                "before network.ping-timeout); the mount reconnects by itself. Use replica or "
                "disperse volumes so one brick's loss does not fail applications.",
    "EIO": "Check `gluster volume heal VOL info split-brain` and resolve the split-brain "
           "(`gluster volume heal VOL split-brain latest-mtime|bigger-file|source-brick ...`); "
           "keep client quorum on (cluster.quorum-type auto) so it cannot happen again. An EIO "
           "at fsync/close with write-behind on reports an earlier write that failed.",
    "ESTALE": "Another client removed or replaced the file while this one held it: reopen it "
              "by path; coordinate writers (locks, or rename-into-place on one client).",
}


def op_text(op: str) -> str:
    calls = SYSCALLS.get(op)
    return f"FUSE {op} ({calls})" if calls else f"FUSE {op}"


class FuseErrors(Detector):
    id = "fuse-errors"
    needs = frozenset({"probe"})
    wants = Wants(kinds={"fuse.reply", "fuse.pending", "fuse.syscall"}, details=())   # the join decodes its calls
    options = {"slow_s": Option(1.0, "the fuse probes send requests slower than this "
                                     "(seconds); one unanswered this long is a hung call")}

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.held: OrderedDict[tuple, tuple[dict, str]] = OrderedDict()   # awaiting their call
        self.early: OrderedDict[tuple, dict] = OrderedDict()   # calls ahead of their request

    def observe(self, ev):
        kind = ev.get("kind")
        if kind == "fuse.pending":
            return self._hung(ev)
        if kind == "fuse.syscall":
            return self._syscall(ev)
        if kind != "fuse.reply":       # a runtime without subscriptions hands it everything
            return []
        name = ERRNOS.get(ev.get("errno"))
        if ev.get("errno_name") == "ENOENT" and ev.get("opcode") in FD_OPS:
            name = "ENOENT"
        if name is None:
            return []
        if not ev.get("in_syscall"):
            return self._failed(ev, name, None)
        key = (ev.get("connection"), ev.get("unique"))
        call = self.early.pop(key, None)
        if call is not None:
            return self._failed(ev, name, call)
        _bounded_put(self.held, key, (ev, name))
        return []

    def _syscall(self, call):
        key = (call.get("connection"), call.get("unique"))
        held = self.held.pop(key, None)
        if held is None:
            _bounded_put(self.early, key, call)
            return []
        return self._failed(held[0], held[1], call)

    def due(self):
        return next(iter(self.held.values()))[0]["time_ns"] + SYSCALL_WAIT_NS if self.held else None

    def tick(self, now):
        found = []
        while self.held:
            key, (ev, name) = next(iter(self.held.items()))
            if ev["time_ns"] + SYSCALL_WAIT_NS > now:
                break
            del self.held[key]
            found.extend(self._failed(ev, name, None))
        self.early = OrderedDict((k, c) for k, c in self.early.items()
                                 if c["time_ns"] + SYSCALL_WAIT_NS > now)
        return found

    def finish(self):
        found = [f for ev, name in self.held.values() for f in self._failed(ev, name, None)]
        self.held.clear()
        self.early.clear()
        return found

    def _failed(self, ev, name, call):
        """The finding for a failed request; `call` is its system call's event when traced."""
        join = self.state.fuse.join(ev)
        op = ev.get("opcode") or "?"
        path = join.path or (call or {}).get("path") or f"node {ev.get('nodeid')}"
        cause, evidence = self._cause(name, join)
        got, what, severity = name, op_text(op), "error"
        syscall = (call or {}).get("syscall") or ev.get("syscall")
        if syscall:     # the traced call's path, else the fd it was called on
            src = call if call is not None and ("path" in call or "fd" in call) else ev
            arg = f'"{src["path"]}"' if src is call and src.get("path") else \
                (f"fd {src['fd']}" if isinstance(src.get("fd"), int) else "")
            what = f"{syscall}({arg}) (FUSE {op})"
        said = ""
        if call is not None:
            got = call.get("errno_name") or name
            if not call.get("errno_name"):   # the kernel or client hid it: nothing failed the program
                severity, got = "warning", f"{name} inside"
                said = f" Its {syscall}() returned {call.get('ret')}: the program saw no error."
            elif got != name:
                said = f" The program's {syscall}() returned {got}."
        on = "" if f'"{path}"' in what else f" on {path}"    # the call's own path says it
        return [self.finding(
            ev["time_ns"], severity=severity,
            title=f"{join.program} got {got} from {what}{on}",
            explanation=f"{join.program} on {ev.get('mount') or 'a FUSE mount'}: {what}{on} "
                        f"failed with {name} after {_ms(ev.get('latency_ns'))}." + said
                        + " " + cause + _uncertain(join),
            remedy=REMEDY["ESTALE" if name in STALE else name],
            evidence=[ev, *([call] if call else []), *evidence],
            # one cause, many files: an application failing op after op folds into one
            key=f"{name}:{ev.get('pid')}:{ev.get('comm')}:{op}", path=path, program=ev.get("comm"),
            pid=ev.get("pid"), errno_name=name, fuse_op=op,
            **({"syscall": syscall} if syscall else {}),
            **({"syscall_errno_name": call.get("errno_name")} if call and call.get("errno_name") else {}))]

    def _cause(self, name: str, join) -> tuple[str, list[dict]]:
        same = [r for r in join.failed_replies if r.get("errno_name") == name]
        if same:
            r = same[0]
            brick = self.state.fuse.brick_of(r) or r.get("src")
            calls = [c for c in join.calls if c.get("xid") == r.get("xid")][:1]
            extra = (" (the file was removed or replaced by another client while this one held "
                     "it open; see stale-handle)") if name in STALE else ""
            return (f"On the wire, brick {brick} answered {r.get('procedure')} with {name} "
                    f"({len(same)} of {len(join.replies)} replies to this thread)" + extra + ".",
                    [*calls, r])
        if name in STALE:
            reopen = self.state.fuse.recent_failed(REOPEN, STALE, join.request["time_ns"])
            if reopen:
                r = reopen[-1]
                return (f"The file went away under the open fd: after the brick reconnected, the "
                        f"client's re-open of its fds got {r.get('errno_name')} from "
                        f"{self.state.fuse.brick_of(r) or r.get('src')} (the file was removed or "
                        "replaced by another client while this one held it; see stale-handle). "
                        "Which re-open was this file's is not on the wire by node id: the "
                        "latest is shown.", [r])
        down = list(join.down_bricks)
        if name == "ENOTCONN" and down:
            bricks = sorted({_brick_of_mark(self.state, m) for m in down})
            return (f"No reply carried it: the client made {name} itself for a brick it knows "
                    f"is down. On the wire: brick {', '.join(bricks)} is down ("
                    + "; ".join(_mark_text(m) for m in down[-3:]) + ").", down[-3:])
        if join.unanswered:
            c = join.unanswered[0]
            return (f"Its {c.get('procedure')} to {self.state.fuse.brick_of(c) or c.get('dst')} "
                    "was never answered.", [c])
        if not join.calls or (name == "ENOTCONN" and not join.failed_replies):
            where = {"ENOTCONN": "a brick the client had already lost (no mark of it in the "
                                 "capture: it went down before the capture began)",
                     "EIO": "split-brain (see split-brain) or an earlier write that failed",
                     "ESTALE": "a handle the client already knew to be stale",
                     "ENOENT": "a file it already knew to be gone under the open fd",
                     "EBADFD": "an fd it had marked bad (its re-open after a reconnect "
                               "failed)"}[name]
            what = "No RPC crossed the wire for it" if not join.calls else "No reply carried it"
            return f"{what}: the client made {name} itself: {where}.", list(join.calls[:3])
        failed = join.failed_replies
        if failed:
            r = failed[0]
            return (f"On the wire, {r.get('procedure')} got {r.get('errno_name')}: the client "
                    f"turned that into {name}.", [r])
        why = {"EIO": " (on a replicated volume: split-brain, the copies blame each other; "
                      "see split-brain and `gluster volume heal VOL info split-brain`)"}.get(name, "")
        return (f"Its {len(join.calls)} RPCs were answered without error: the client made "
                f"{name} itself{why}.", list(join.calls[:3]))

    def _hung(self, ev):
        join = self.state.fuse.join(ev)
        op, path = ev.get("opcode") or "?", join.path or f"node {ev.get('nodeid')}"
        what = f"{ev['syscall']}() (FUSE {op})" if ev.get("syscall") else op_text(op)
        waits = "; ".join(f"{c.get('procedure')} to {self.state.fuse.brick_of(c) or c.get('dst')}"
                          for c in join.unanswered[:3])
        cause = f"It waits for {waits}, unanswered." if waits else \
            "No RPC of its thread is outstanding on the wire: it waits inside the client."
        return [self.finding(
            ev["time_ns"], severity="warning",
            title=f"{join.program} hangs in {what} on {path}",
            explanation=f"{join.program}'s {what} on {path} has waited "
                        f"{_ms(ev.get('waited_ns'))} for the FUSE client. " + cause + _uncertain(join),
            remedy="Find the brick that does not answer (brick-not-responding, rpc-unanswered); "
                   "a brick that stopped answering is disconnected after network.ping-timeout.",
            evidence=[ev, *join.unanswered[:3]],
            key=f"hung:{ev.get('comm')}:{op}:{path}", path=path, program=ev.get("comm"),
            pid=ev.get("pid"), fuse_op=op, **({"syscall": ev["syscall"]} if ev.get("syscall") else {}))]


def _bounded_put(table: OrderedDict, key, value) -> None:
    table[key] = value
    if len(table) > MAX_HELD:
        table.popitem(last=False)


def _ms(ns) -> str:
    return f"{ns / 1e6:.1f} ms" if isinstance(ns, int) else "an unknown time"


def _uncertain(join) -> str:
    return (" The join to the wire is uncertain: " + "; ".join(join.uncertain) + ".") \
        if join.uncertain else ""


def _brick_of_mark(state, mark: dict) -> str:
    brick = (mark.get("args") or {}).get("brick")
    if brick:
        return f"{(mark.get('src') or '').rsplit(':', 1)[0]}:{brick}"
    return state.fuse.brick_of(mark) or mark.get("src") or "?"


def _mark_text(mark: dict) -> str:
    if mark.get("kind") == "rpc.reply":
        return "glusterd answered PORTBYBRICK with -1: the brick is not running"
    return f"the brick closed the client's connection ({mark.get('reason')})"


@hookimpl
def correlate_detectors(state):
    return [FuseErrors(state)]
