"""A live capture on stdin decoded in a process of its own, beside the one that merges and
runs the detectors.

In one process the two take turns under Python's global lock: `run --pcap -` took about
4 s for a capture that `analyze` reads in 3. Forked before any thread starts, the decoding
process reads stdin and sends the events in pickled batches over a pipe; this process
unpickles them (about 5 us an event) and works on. A batch leaves when it is full, or at
once when the decoder is about to wait for stdin: a quiet capture holds back no event.

Messages on the pipe: a 4-byte length, then a pickled (tag, payload): ("kind", the input's
kind), ("events", [event, ...]), ("error", the exception that ended the reading), and last
("end", (counts, first places, fatal message)) of the input's Diagnostics.
"""
from __future__ import annotations

import fcntl
import os
import pickle
import select
import signal
import struct
import sys
from collections.abc import Callable, Iterator

from ..diagnostics import Diagnostics
from ..errors import InputError
from ..events import DETAILS_LATER

BATCH = 256                      # events per message
PIPE_BYTES = 1 << 20             # the pipe's capacity, where Linux lets us set it
_LENGTH = struct.Struct("<I")


class _FlushBeforeWaiting:
    """stdin for the decoder: before a read that would wait, what is decoded is sent."""

    def __init__(self, raw, flush: Callable[[], None]):
        self._raw = raw
        self._fd = raw.fileno()
        self._flush = flush

    def _ready(self) -> None:
        if not select.select([self._fd], [], [], 0)[0]:
            self._flush()

    def read1(self, n: int = -1) -> bytes:
        self._ready()
        return self._raw.read1(n)

    def read(self, n: int = -1) -> bytes:
        self._ready()
        return self._raw.read(n)

    def __getattr__(self, name):           # peek, readline, close, name ...
        return getattr(self._raw, name)

    def __iter__(self):
        return iter(self._raw)


def _send(out: int, tag: str, payload) -> None:
    blob = pickle.dumps((tag, payload), pickle.HIGHEST_PROTOCOL)
    data = memoryview(_LENGTH.pack(len(blob)) + blob)
    while data:
        data = data[os.write(out, data):]


def _decode(stdin_fd: int, out: int, decoding: dict) -> None:
    """The decoding process: stdin (as `stdin_fd`: multiprocessing gives the process
    /dev/null as its stdin) -> batches of events on `out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the merging process's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # the merge ended: so do we
    from . import open_input
    batch: list[dict] = []

    def flush() -> None:
        if batch:
            _send(out, "events", batch)
            batch.clear()

    diag = Diagnostics("stdin")
    try:
        stdin = _FlushBeforeWaiting(os.fdopen(stdin_fd, "rb"), flush)
        inp = open_input("-", fileobj=stdin, **decoding)
        diag = inp.diag
        _send(out, "kind", inp.kind)
        portable = None
        for ev in inp.events:
            later = ev.get(DETAILS_LATER)
            if later is not None:
                if portable is None:
                    from ..wire.rpc import portable_later as portable
                ev[DETAILS_LATER] = portable(later)
            batch.append(ev)
            if len(batch) >= BATCH:
                flush()
        flush()
    except Exception as exc:        # reported by the merging process, as a source's error
        flush()
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        _send(out, "error", exc)
    _send(out, "end", (dict(diag.counts), diag.first_where, diag.fatal))


class DecoderProcess:
    """Start with `DecoderProcess(decoding)` before any thread; `events()` (in the source's
    thread) yields what it decodes (`batches()`: in the lists it came in); `diag` holds its skips once `events()` has ended;
    `on_kind(kind)` is called with the input's kind before its first event. `opened()`
    waits until the input's kind is known, or raises why it could not be read (InputError:
    not a capture, empty), as opening a file here would."""

    def __init__(self, decoding: dict, on_kind: Callable[[str], None] | None = None):
        import multiprocessing
        self.diag = Diagnostics("stdin")
        self.on_kind = on_kind
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass                     # the default 64 KiB: more, smaller waits
        if sys.stdin is None:          # started with stdin closed (`<&-`)
            raise InputError("stdin", "standard input is closed")
        stdin = os.dup(sys.stdin.fileno())
        ctx = multiprocessing.get_context("fork")
        self.process = ctx.Process(target=_decode, args=(stdin, w, decoding),
                                   name="correlate-decode", daemon=True)
        self.process.start()
        os.close(w)
        os.close(stdin)
        self._in = os.fdopen(r, "rb")
        self._messages_left = self._messages()
        self.kind: str | None = None

    def opened(self) -> str:
        for tag, payload in self._messages_left:
            if tag == "kind":
                self.kind = payload
                return payload
            if tag == "error":
                self._in.close()
                raise payload
            break
        raise InputError("stdin", "the decoding process ended before reading it")

    def _messages(self) -> Iterator[tuple[str, object]]:
        read = self._in.read
        while True:
            head = read(_LENGTH.size)
            if len(head) < _LENGTH.size:
                return               # the process died: what it sent is all there is
            blob = read(_LENGTH.unpack(head)[0])
            yield pickle.loads(blob)

    def events(self) -> Iterator[dict]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[dict]]:
        """The events as the decoder sent them, a list at a time (LiveMerger.add(batched=True)
        takes them so: one hand-over between threads per batch, not per event)."""
        try:
            for tag, payload in self._messages_left:
                if tag == "events":
                    yield payload
                elif tag == "kind":
                    self.kind = payload
                    if self.on_kind is not None:
                        self.on_kind(payload)
                elif tag == "error":
                    raise payload
                elif tag == "end":
                    counts, first_where, fatal = payload
                    self.diag.counts.update(counts)
                    self.diag.first_where.update(first_where)
                    self.diag.fatal = fatal
                    return
            self.process.join(1)
            if self.process.exitcode != 0:
                self.diag.stop(f"the decoding process ended with code {self.process.exitcode}")
        finally:
            self._in.close()

    def stop(self) -> None:
        """The run ends: a decoder still waiting on a quiet stdin is not waited for."""
        if self.process.is_alive():
            self.process.terminate()
