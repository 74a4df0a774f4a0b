"""split-brain: replica bricks whose AFR pending counters blame each other for one file.

AFR (xlators/cluster/afr/src) keeps, on every brick's copy of a file, one xattr per replica
`trusted.afr.<VOL>-client-<N>`: 12 bytes, three big-endian 32-bit counters of operations
that brick N missed, for data, metadata and entry (afr_index_for_transaction_type: 0, 1, 2).
A LOOKUP asks every brick for them and the replies carry them in xdata. A brick whose copy
says client-M has pending data "blames" M. The client can heal only from a brick nobody
blames (a source); when each brick is blamed by another for the same kind, there is none:
that is split-brain, and reads of the file fail with EIO made in the client itself (no READ
goes out). `trusted.afr.dirty` marks an operation in flight on that brick, not a blame.
"""
from __future__ import annotations

import re
import shlex

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState

from .gluster_files import DETAILS as FILES_DETAILS, stat_of

KINDS = ("data", "metadata", "entry")
PENDING_KEY = re.compile(r"^trusted\.afr\.(?P<vol>.+)-client-(?P<index>\d+)$")
WAIT_FOR_EIO_NS = 2_000_000_000    # how long a finding waits for the application's EIO
EIO = 5
READ_FUNCTIONS = {"glfs_pread", "glfs_read", "glfs_preadv", "glfs_readv", "glfs_open"}
MAX_FILES = 4096


def parse_pending(value) -> tuple[int, int, int] | None:
    """The three counters of a `trusted.afr.*` value (rendered "0x" + 24 hex digits)."""
    if not isinstance(value, str):
        return None
    text = value[2:] if value.startswith("0x") else value
    if len(text) != 24:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return tuple(int.from_bytes(raw[i:i + 4], "big") for i in (0, 4, 8))


def pending_of(xdata: dict) -> tuple[str, dict[int, tuple[int, int, int]]]:
    """(volume, {client index: counters}) from a reply's xdata."""
    volume, out = "", {}
    for key, value in (xdata or {}).items():
        m = PENDING_KEY.match(str(key))
        counters = parse_pending(value) if m else None
        if counters is not None:
            volume = m.group("vol")
            out[int(m.group("index"))] = counters
    return volume, out


def slim(reply: dict) -> dict:
    """The parts of a LOOKUP reply a finding shows: kept per replica of every file seen, so
    the iatt and the other xattrs are left out."""
    out = {k: reply[k] for k in ("time_ns", "layer", "kind", "source", "xid", "program", "version",
                                 "procedure", "src", "dst", "conn", "op_ret", "op_errno",
                                 "errno_name", "latency_ns") if k in reply}
    xdata = (reply.get("result") or {}).get("xdata") or {}
    st = stat_of(reply)
    out["result"] = {"xdata": {k: v for k, v in xdata.items() if str(k).startswith("trusted.afr.")},
                     "prestat": {k: st.get(k) for k in ("ia_gfid", "ia_size", "ia_mtime",
                                                        "ia_mtime_nsec", "ia_type")}}
    return out


def split_kinds(copies: dict[int, dict]) -> list[str]:
    """Kinds for which no replying brick is a source (each is blamed by another)."""
    if len(copies) < 2:
        return []
    found = []
    for k, kind in enumerate(KINDS):
        blamed = {target for me, c in copies.items()
                  for target, counters in c["pending"].items() if target != me and counters[k]}
        if blamed and not set(copies) - blamed:
            found.append(kind)
    return found


def infer_index(pending: dict[int, tuple], known: set[int]) -> int | None:
    """Without the SETVOLUME: the replica whose key is missing from its own reply, when
    exactly one of the indexes seen for this file is missing (bricks keep no key for
    themselves unless they once blamed themselves)."""
    missing = known - set(pending)
    return next(iter(missing)) if len(missing) == 1 else None


class SplitBrain(Detector):
    id = "split-brain"
    # LOOKUP replies' AFR xattrs (names and clients are the shared state's), and the
    # application's EIO (probes). A finding waits for that EIO until time passes: due/tick.
    wants = Wants(kinds={"rpc.call", "rpc.reply", "probe.call", "probe.return"},
                  procedures=FILES_DETAILS, details=FILES_DETAILS)

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.copies: dict[str, dict[int, dict]] = {}     # gfid -> replica index -> copy
        self.volume: dict[str, str] = {}
        self.unplaced: dict[str, dict] = {}              # gfid -> brick address -> reply
        self.waiting: dict[str, dict] = {}               # gfid -> pending finding parts
        self.reported: set[str] = set()
        self.last_call: dict[tuple, dict] = {}           # (pid, tid) -> probe.call

    def observe(self, ev):
        kind = ev.get("kind")
        found = []
        if kind == "rpc.reply" and ev.get("procedure") == "LOOKUP" and ev.get("op_ret", -1) >= 0:
            self._lookup_reply(ev)
        elif kind == "probe.call":
            self.last_call[(ev.get("pid"), ev.get("tid"))] = ev
        elif kind == "probe.return" and ev.get("errno") == EIO and ev.get("function") in READ_FUNCTIONS:
            found += self._application_eio(ev)
        if self.waiting:
            found += self._waited_enough(ev["time_ns"])
        return found

    def _lookup_reply(self, ev: dict) -> None:
        xdata = (ev.get("result") or {}).get("xdata") or {}
        volume, pending = pending_of(xdata)
        gfid = stat_of(ev).get("ia_gfid")
        if not gfid or not volume:
            return
        copies = self.copies.setdefault(gfid, {})
        if len(self.copies) > MAX_FILES:
            oldest = next(iter(self.copies))
            del self.copies[oldest]
            self.unplaced.pop(oldest, None)
        client = self.state.clients.process(ev)
        client = client if client is not None and client.translator else None
        ev = slim(ev)
        index = client.index if client else None
        # Without the SETVOLUME, replies wait (one per brick address) until the keys seen
        # for this file tell which replica each one is.
        unknown = self.unplaced.setdefault(gfid, {})
        if index is None:
            unknown[ev.get("src")] = (pending, ev)
        else:
            self._place(copies, index, pending, ev, client)
        known = set(copies) | {i for c in copies.values() for i in c["pending"]} \
            | {i for p, _ in unknown.values() for i in p}
        for src, (p, reply) in list(unknown.items()):
            guess = infer_index(p, known)
            if guess is not None and guess not in copies:
                self._place(copies, guess, p, reply, None)
                del unknown[src]
        self.volume[gfid] = volume
        kinds = split_kinds(copies)
        if kinds and gfid not in self.reported and gfid not in self.waiting:
            self.waiting[gfid] = {"since": ev["time_ns"], "kinds": kinds, "eio": None}

    @staticmethod
    def _place(copies: dict, index: int, pending: dict, ev: dict, client) -> None:
        st = stat_of(ev)
        copies[index] = {"pending": pending, "reply": ev, "client": client,
                         "brick": client.brick if client else ev.get("src"),
                         "size": st.get("ia_size"), "mtime": (st.get("ia_mtime"), st.get("ia_mtime_nsec"))}

    def _application_eio(self, ret: dict) -> list[dict]:
        call = self.last_call.get((ret.get("pid"), ret.get("tid")))
        path = ((call or {}).get("args") or {}).get("path")
        for gfid, w in self.waiting.items():
            if path is None or path == self.state.files.path(gfid):
                w["eio"] = (call, ret)
                return [self._finding(gfid, ret["time_ns"])]
        return []

    def due(self) -> int | None:
        """When the oldest finding stops waiting for the application's EIO."""
        if not self.waiting:
            return None
        return min(w["since"] for w in self.waiting.values()) + WAIT_FOR_EIO_NS

    def tick(self, now: int):
        return self._waited_enough(now)

    def _waited_enough(self, now: int) -> list[dict]:
        due = [g for g, w in self.waiting.items() if now - w["since"] >= WAIT_FOR_EIO_NS]
        return [self._finding(g, now) for g in due]

    def finish(self):
        return [self._finding(g, w["since"]) for g, w in list(self.waiting.items())]

    def _finding(self, gfid: str, now: int) -> dict:
        w = self.waiting.pop(gfid)
        self.reported.add(gfid)
        copies = self.copies.get(gfid, {})
        volume = self.volume.get(gfid, "VOLUME")
        path = self.state.files.path(gfid)
        kinds = w["kinds"]
        order = sorted(copies)
        blames = []
        for i in order:
            c = copies[i]
            accused = [f"client-{t} ({', '.join(f'{KINDS[k]} {n}' for k, n in enumerate(cnt) if n)})"
                       for t, cnt in sorted(c["pending"].items()) if t != i and any(cnt)]
            blames.append(f"{c['brick']} (client-{i}, {c['size']} bytes) blames "
                          + (", ".join(accused) if accused else "nobody"))
        seen = f"{path}" + ("" if path.startswith("/") else f" (its name was not in the capture)")
        evidence = [copies[i]["reply"] for i in order]
        app = ""
        if w["eio"]:
            call, ret = w["eio"]
            evidence += [e for e in (call, ret) if e]
            app = (f" The application saw it: {ret.get('function')} in pid {ret.get('pid')} "
                   f"({ret.get('comm')}) returned -1 with errno EIO.")
        return self.finding(
            now, severity="error",
            title=f"split-brain ({'/'.join(kinds)}) on {path} in volume {volume}",
            explanation=(f"The replicas of {seen} (gfid {gfid}) accuse each other of missed "
                         f"{' and '.join(kinds)} operations, so no copy can be trusted to heal "
                         f"the others: " + "; ".join(blames) + ". The client refuses the "
                         "file with EIO rather than pick one." + app),
            remedy=self._remedy(volume, path, gfid, kinds, copies),
            evidence=evidence, key=f"split-brain:{gfid}", gfid=gfid, path=path, volume=volume,
            split_kinds=kinds)

    @staticmethod
    def _remedy(volume: str, path: str, gfid: str, kinds: list[str], copies: dict) -> str:
        # quoted for a shell: a file name comes from the wire and may hold anything
        target = shlex.quote(path if path.startswith("/") else f"gfid:{gfid}")
        lines = [f"Decide which copy is right (`gluster volume heal {volume} info split-brain` "
                 "lists the files), then heal from it."]
        if "entry" in kinds:
            lines.append("Entry split-brain (the directory's entries differ) is not healed by "
                         "these commands: remove the unwanted entries from one brick by hand, "
                         "then run `gluster volume heal " + volume + "`.")
        if "data" in kinds:
            sizes = {i: c["size"] for i, c in copies.items() if c["size"] is not None}
            if len(set(sizes.values())) > 1:
                big = max(sizes, key=sizes.get)
                lines.append(f"Keep the bigger copy ({copies[big]['brick']}, {sizes[big]} bytes): "
                             f"`gluster volume heal {volume} split-brain bigger-file {target}`.")
        if "data" in kinds or "metadata" in kinds:
            newest = max(copies, key=lambda i: tuple(x or 0 for x in copies[i]["mtime"]))
            lines.append(f"Keep the copy modified last ({copies[newest]['brick']}): "
                         f"`gluster volume heal {volume} split-brain latest-mtime {target}`.")
            lines.append("Keep the copy of a brick you choose: " + " or ".join(
                f"`gluster volume heal {volume} split-brain source-brick {copies[i]['brick']} {target}`"
                for i in sorted(copies)) + ".")
        lines.append("To avoid it: client quorum (`cluster.quorum-type auto`) or an arbiter brick "
                     "(replica 3 arbiter 1); replica 2 without quorum lets both bricks take writes "
                     "while they cannot see each other.")
        return " ".join(lines)


@hookimpl
def correlate_detectors(state):
    return [SplitBrain(state)]
