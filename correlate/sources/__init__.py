"""Any input -> an event iterator: captures, saved timelines (JSON Lines), Gluster logs.

The kind of an input is recognised from its first bytes, so users just name files (or `-`).
"""
from __future__ import annotations

import gzip
import zlib
import json
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..diagnostics import Diagnostics
from ..errors import GZIP_DAMAGE, InputError, what_it_starts_with
from ..validate import clean_event

# pcap (microsecond, nanosecond, Kuznetzov's modified pcap; both byte orders) and pcapng:
# every format wire/capture.py reads.
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
               b"\xa1\xb2\x3c\x4d", b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34",
               b"\x0a\x0d\x0d\x0a")
GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 16 * 1024 * 1024   # a timeline line longer than this is damage, not an event


@dataclass
class Input:
    """One opened input: its name, kind, events and what was skipped reading it."""
    name: str
    kind: str                      # "capture" | "timeline" | "log"
    events: Iterator[dict]
    diag: Diagnostics = field(repr=False, default=None)


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        if sys.stdin is None:      # started with stdin closed (`<&-`)
            raise InputError("stdin", "standard input is closed")
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None


def _peek(f: BinaryIO, n: int = 64) -> bytes:
    if hasattr(f, "peek"):
        return f.peek(n)[:n]
    raise InputError(getattr(f, "name", "input"), "cannot peek at this input")


def sniff(head: bytes) -> str:
    if head[:4] in PCAP_MAGICS:
        return "capture"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "timeline"
    from .logs import looks_like_gluster_log
    if looks_like_gluster_log(head):
        return "log"
    return "unknown"


def open_input(path: str, *, host: str | None = None, name: str | None = None,
               details: bool | Collection[str] = True, details_later: bool = False,
               parallel=None, skip=None, fileobj: BinaryIO | None = None,
               keylog=None) -> Input:
    """Open a capture, timeline or Gluster log (plain or gzip'd; `-` is stdin). `details`
    and `details_later`: which RPC details a capture's decoder decodes (wire.decode);
    `parallel` (a wire.parallel.Parallel): decode a capture file in several processes;
    `skip`: a live capture's packets to leave out (wire.decode, lag.LagWatch.skip);
    `fileobj`: `path` already open (stdin as a decoding process reads it);
    `keylog` (wire.tls_keys.KeyLog): TLS connections of a capture to decrypt."""
    name = name or ("stdin" if path == "-" else path.rsplit("/", 1)[-1])
    shown = "stdin" if path == "-" else path      # in errors: the input as the user named it
    f = fileobj if fileobj is not None else _open_binary(path)
    head = _peek(f)
    if head[:2] == GZIP_MAGIC:
        gz = gzip.GzipFile(fileobj=f)
        try:
            inner = gz.peek(64)[:64]
        except (OSError, EOFError, zlib.error):
            raise InputError(shown, GZIP_DAMAGE) from None
        kind, f = sniff(inner), gz
    else:
        kind = sniff(head)
    diag = Diagnostics(name)
    if kind == "capture" and parallel is not None and path != "-":
        f.close()
        return Input(name, kind, parallel.decode(path, name, diag, host=host, details=details,
                                                 details_later=details_later, keylog=keylog), diag)
    if kind == "capture":
        from ..wire.decode import decode_capture
        return Input(name, kind, decode_capture(path, name, host=host, diag=diag, fileobj=f,
                                                   details=details, details_later=details_later,
                                                   skip=skip, keylog=keylog), diag)
    if kind == "timeline":
        return Input(name, kind, _until_damage(read_timeline(f, name, diag, host), diag), diag)
    if kind == "log":
        from .logs import read_gluster_log
        return Input(name, kind, _until_damage(read_gluster_log(f, name, host=host, diag=diag), diag), diag)
    raise InputError(shown, "not a capture, a correlate timeline or a Gluster log "
                            f"({what_it_starts_with(head)})")


def _until_damage(events: Iterator[dict], diag: Diagnostics) -> Iterator[dict]:
    """A read failing midway (gzip data cut short, an I/O error) ends the input with a note;
    the events before it are kept."""
    try:
        yield from events
    except (EOFError, zlib.error, gzip.BadGzipFile):
        diag.stop(GZIP_DAMAGE)
    except OSError as exc:
        diag.stop(f"read error ({exc.strerror or exc})")


def read_timeline(f: BinaryIO, source: str, diag: Diagnostics, host: str | None = None) -> Iterator[dict]:
    """Events of a saved JSON Lines timeline; bad lines are counted and skipped."""
    for number, raw in enumerate(_bounded_lines(f, diag), 1):
        if not raw.strip():
            continue
        try:
            ev = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            diag.skip("line that is not JSON", f"line {number}")
            continue
        except RecursionError:
            diag.skip("line nested too deep to read", f"line {number}")
            continue
        if isinstance(ev, dict) and ev.get("kind") == "timeline.header":
            continue
        ev = clean_event(ev, diag, f"line {number}")
        if ev is None:
            continue
        if host and "host" not in ev:
            ev["host"] = host
        yield ev


def _bounded_lines(f: BinaryIO, diag: Diagnostics) -> Iterator[bytes]:
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            diag.skip("line longer than 16 MiB")
            while line and not line.endswith(b"\n"):   # skip the rest of it
                line = f.readline(MAX_LINE)
            continue
        yield line
