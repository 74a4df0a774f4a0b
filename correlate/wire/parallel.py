"""One capture decoded by several processes, with the events `decode_capture` would give.

Each task reads the whole capture but decodes only its shard of the TCP connections
(connections are dealt to shards in order of first appearance; an ICMP error goes with the
connection whose packet it quotes), and hears of every other packet's time only, so SYN
timeouts fire at the same packet. It writes its events, each with its place in the
one-process order, to a spool file: (packet being fed, 0 for SYN timeouts then 1 for the
packet's own events, first SYN's packet, n-th event of the task); at the end of input,
timeouts by first SYN, then each connection's last events in the order it was last active.
`decode_parallel` merges the spool files on that key as the tasks write them (memory: one
batch per task) and renumbers connections in the order they appear, as one tracker would.

The tasks run in any concurrent.futures executor: local processes (`--jobs N`) or a Dask
cluster (`--scheduler`), whose workers then need the captures and the spool directory on a
path they share. Per-task limits (connections at once, bytes buffered) apply per shard.
"""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Collection, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from heapq import merge

from ..diagnostics import Diagnostics
from ..events import DETAILS_LATER
from .capture import open_capture
from .packet import parse_frame
from .rpc import RpcSink, portable_later
from .tcp import TcpTracker

BATCH = 512                 # events per pickled batch in a spool file
END = float("inf")           # the place of the events made at the end of input
MIN_BYTES_PER_JOB = 4 << 20  # smaller captures are decoded in one process: no gain
POLL_S = 0.005               # how often a spool file that has no new batch yet is looked at
_LENGTH = struct.Struct("<Q")
_NEW_CONN, _EVENT = 0, 1


@dataclass(frozen=True)
class ShardTask:
    path: str
    source: str
    shard: int
    shards: int
    spool: str                    # where this task writes its events
    host: str | None = None
    details: bool | Collection[str] = True
    details_later: bool = False
    keylog: object = None           # tls_keys.KeyLog: TLS connections to decrypt


@dataclass
class ShardResult:
    spool: str
    counts: dict
    first_where: dict
    fatal: str | None


class _Shards:
    """Which shard a packet's connection belongs to: connections in order of first
    appearance, dealt round-robin (a capture's few busy connections spread evenly). Every
    task sees every packet, so all agree. Past MAX_DEALT connections, a hash of the two
    endpoints decides (the table stays bounded and a connection never changes shard)."""

    MAX_DEALT = 65536

    def __init__(self, shards: int):
        self.shards = shards
        self.dealt: dict[tuple, int] = {}

    def of(self, pkt) -> int:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        shard = self.dealt.get(key)
        if shard is not None:
            return shard
        back = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        if len(self.dealt) >= 2 * self.MAX_DEALT:
            a, b = f"{key[0]}|{key[1]}", f"{back[0]}|{back[1]}"
            return zlib.crc32((a + "/" + b if a < b else b + "/" + a).encode()) % self.shards
        shard = len(self.dealt) // 2 % self.shards
        self.dealt[key] = self.dealt[back] = shard
        return shard


class _ShardTracker(TcpTracker):
    """A TcpTracker that reports each connection it numbers (its spool gets a marker)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.numbered: list[int] = []

    def _new_state(self, *args, **kwargs):
        st = super()._new_state(*args, **kwargs)
        self.numbered.append(st.conn.number)
        return st


def decode_shard(task: ShardTask) -> ShardResult:
    """Decode one shard of one capture into task.spool. Runs in a worker process."""
    diag = Diagnostics(task.source)
    scratch = Diagnostics(task.source)      # what the other shards count already
    first = task.shard == 0                 # counts reading and packet damage, for all
    sink = RpcSink(task.source, diag, details=task.details, details_later=task.details_later,
                   keylog=task.keylog)
    tracker = _ShardTracker(task.source, sink, diag)
    shards = _Shards(task.shards)
    seq = 0
    batch: list = []
    with open(task.spool, "wb") as out:
        def put(place: tuple, kind: int, item) -> None:
            nonlocal seq
            seq += 1
            batch.append((place + (seq,), kind, item))
            if len(batch) >= BATCH:
                _write_batch(out, batch)

        def add(ev: dict, frame: int) -> dict:
            ev.setdefault("frame", frame)
            if task.host:
                ev["host"] = task.host
            later = ev.get(DETAILS_LATER)
            if later is not None:
                ev[DETAILS_LATER] = portable_later(later)
            return ev

        for frame in open_capture(task.path, diag if first else scratch):
            number = frame.number
            for ev in tracker.tick(frame.time_ns):
                put((number, 0, ev["frame"]), _EVENT, add(ev, number))
            pkt = parse_frame(frame, diag if first else scratch)
            if pkt is None:
                continue
            if shards.of(pkt) != task.shard:
                continue
            events = tracker.feed_parsed(frame, pkt)
            for conn in tracker.numbered:
                put((number, 1, 0), _NEW_CONN, conn)
            tracker.numbered.clear()
            for ev in events:
                put((number, 1, 0), _EVENT, add(ev, number))
        order: list = []
        for ev, (phase, frame) in zip(tracker.finish(order), order):
            if task.host:
                ev["host"] = task.host
            if DETAILS_LATER in ev:
                ev[DETAILS_LATER] = portable_later(ev[DETAILS_LATER])
            put((END, phase, frame), _EVENT, ev)
        if batch:
            _write_batch(out, batch)
    return ShardResult(task.spool, dict(diag.counts), diag.first_where, diag.fatal)


def _write_batch(out, batch: list) -> None:
    """A length, then the pickled batch; flushed, so the merging process can read it now."""
    blob = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(blob)) + blob)
    out.flush()
    batch.clear()


def _follow(path: str, future: Future, shard: int) -> Iterator[tuple]:
    """(place, shard, kind, item) for each item of a spool file as its task writes it (one
    batch in memory); ends when the task has ended and everything it wrote is read."""
    while True:
        done = future.done()                # asked before looking: a task that wrote its file
        if os.path.exists(path):            # and ended between the two is still read
            break
        if done:
            future.result()                 # the task failed before writing: raise its error
            return
        time.sleep(POLL_S)
    with open(path, "rb") as f:
        while True:
            head = _read_exact(f, _LENGTH.size, future)
            if head is None:
                return
            blob = _read_exact(f, _LENGTH.unpack(head)[0], future)
            if blob is None:
                raise EOFError(f"spool file {path} ends inside a batch")
            for place, kind, item in pickle.loads(blob):
                yield place, shard, kind, item


def _read_exact(f, n: int, future: Future) -> bytes | None:
    """n bytes, waiting for the writer; None at the end of what a finished task wrote."""
    buf = b""
    while len(buf) < n:
        done = future.done()                # asked before reading: no write can be missed
        chunk = f.read(n - len(buf))
        if chunk:
            buf += chunk
        elif done:
            future.result()                 # raise the task's error, if it failed
            if buf:
                raise EOFError("spool file ends inside a batch")
            return None
        else:
            time.sleep(POLL_S)
    return buf


def merge_shards(streams: list[Iterator[tuple]]) -> Iterator[dict]:
    """The shards' events in one-process order, connections numbered as one tracker would."""
    if len(streams) == 1:
        # One shard (`analyze --jobs 2`: one decoding process) is in that order already, its
        # connections numbered as one tracker numbers them: nothing to merge or renumber.
        for _place, _shard, kind, item in streams[0]:
            if kind == _EVENT:
                yield item
        return
    numbers: dict[tuple[int, int], int] = {}
    for _place, shard, kind, item in merge(*streams, key=lambda t: t[0]):
        if kind == _NEW_CONN:
            numbers[(shard, item)] = len(numbers) + 1
            continue
        conn = item.get("conn")
        if conn is not None:
            item["conn"] = numbers[(shard, conn)]
        yield item


def add_diagnostics(results: list[ShardResult], diag: Diagnostics) -> None:
    """Skips add up; the first place shard 0 saw wins."""
    for r in results:
        diag.counts.update(r.counts)
        for reason, where in r.first_where.items():
            diag.first_where.setdefault(reason, where)
        if r.fatal and not diag.fatal:
            diag.fatal = r.fatal


def shard_tasks(path: str, source: str, shards: int, spool_dir: str, *, host=None,
                details=True, details_later=False, keylog=None) -> list[ShardTask]:
    return [ShardTask(path, source, k, shards, os.path.join(spool_dir, f"{source}.{k}.spool"),
                      host, details, details_later, keylog) for k in range(shards)]


def decode_parallel(tasks: list[ShardTask], executor: Executor, diag: Diagnostics,
                    spool_dir: str | None = None) -> Iterator[dict]:
    """Submit the tasks of one capture now (so several captures run side by side), and
    return an iterator of its merged events. Spool files (and spool_dir) are removed once
    read, or when the iterator is closed."""
    futures = [executor.submit(decode_shard, t) for t in tasks]

    def events() -> Iterator[dict]:
        try:
            yield from merge_shards([_follow(t.spool, f, i)
                                     for i, (t, f) in enumerate(zip(tasks, futures))])
            add_diagnostics([f.result() for f in futures], diag)
        finally:
            for f in futures:
                f.cancel()
            for t in tasks:
                try:
                    os.unlink(t.spool)
                except OSError:
                    pass
            if spool_dir:
                shutil.rmtree(spool_dir, ignore_errors=True)
    return events()


class Parallel:
    """How captures are decoded: `shards` tasks each, in `executor`'s processes; spool files
    in the system temp dir, or beside each capture when `spool_beside` (a cluster's workers
    share the captures' directory, not this machine's temp dir)."""

    def __init__(self, executor: Executor, shards: int, *, spool_beside: bool = False):
        self.executor = executor
        self.shards = shards
        self.spool_beside = spool_beside

    def decode(self, path: str, source: str, diag: Diagnostics, *, host=None, details=True,
               details_later=False, keylog=None) -> Iterator[dict]:
        near = os.path.dirname(os.path.abspath(path)) if self.spool_beside else None
        spool = make_spool_dir(near)
        tasks = shard_tasks(path, source, self.shards, spool, host=host, details=details,
                            details_later=details_later, keylog=keylog)
        return decode_parallel(tasks, self.executor, diag, spool)


def default_jobs(paths: list[str]) -> int:
    """The machine's cores when the captures are large enough to gain from them, else 1."""
    try:
        size = sum(os.path.getsize(p) for p in paths if p != "-")
    except OSError:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, size // MIN_BYTES_PER_JOB))


def make_spool_dir(near: str | None = None) -> str:
    """A private directory for spool files: in the system temp dir, or beside `near` (a
    path the cluster's workers share)."""
    return tempfile.mkdtemp(prefix=".correlate-spool-", dir=near)
