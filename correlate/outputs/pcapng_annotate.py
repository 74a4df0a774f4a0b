"""A capture rewritten as pcapng with comments on the packets that findings rest on.

Wireshark shows a packet comment (`frame.comment`, "pkt_comment" in older releases) in the
packet list and details, so a finding travels with the capture to whoever opens it:

    correlate: finding atime-minus-one [error]: atime -1 sent to the bricks in SETATTR
    correlate: probe glfs_utimens in smbd pid 123 atime=-1 atime_nsec=0 path=/f

Which packets: the frames of each finding's wire evidence from this capture; the probe and
log events of the same finding are written on those packets too. The packets themselves are
copied unchanged, read by the same reader the decoder uses, so packet numbers match the
`frame` numbers in events; a packet the reader had to skip becomes an empty placeholder
packet with a comment, keeping the numbering.

pcapng is written here with struct: one Section Header Block, one Interface Description
Block per link type (nanosecond timestamps), Enhanced Packet Blocks with opt_comment.
"""
from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Iterable

from ..diagnostics import Diagnostics
from ..wire.capture import open_capture
from .terminal import safe_text

MAX_COMMENT_CHARS = 1_000      # one comment (pcapng option lengths are 16-bit anyway)
MAX_COMMENTS_PER_PACKET = 16

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_END, _OPT_COMMENT, _OPT_SHB_USERAPPL, _OPT_IF_TSRESOL = 0, 1, 4, 9
SNAPLEN = 262_144


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def section_header(app: str = "correlate") -> bytes:
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    body += _option(_OPT_SHB_USERAPPL, app.encode()) + _option(_OPT_END, b"")
    return _block(_SHB, body)


def interface_block(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen)
    body += _option(_OPT_IF_TSRESOL, bytes([9])) + _option(_OPT_END, b"")   # 10^-9 s units
    return _block(_IDB, body)


def packet_block(iface: int, time_ns: int, data: bytes, orig_len: int, comments: list[str]) -> bytes:
    t = max(0, min(time_ns, 2 ** 64 - 1))     # the block's two 32-bit halves hold no more
    body = struct.pack("<IIIII", iface, t >> 32, t & 0xFFFFFFFF, len(data), orig_len)
    body += data + b"\0" * ((-len(data)) % 4)
    if comments:
        for c in comments[:MAX_COMMENTS_PER_PACKET]:
            body += _option(_OPT_COMMENT, c.encode("utf-8")[:65000])
        body += _option(_OPT_END, b"")
    return _block(_EPB, body)


def _args_text(args: dict, keys=("atime", "atime_nsec", "mtime", "mtime_nsec", "path", "fd")) -> str:
    return " ".join(f"{k}={safe_text(args[k], 120)}" for k in keys if k in args and args[k] is not None)


def comment_for(ev: dict, finding: dict | None = None) -> str:
    """One line describing an event (or the finding itself) for a packet comment."""
    if ev.get("layer") == "finding":
        text = (f"correlate: finding {ev.get('detector')} [{ev.get('severity')}]: {ev.get('title')}"
                + (f" (seen {ev['count']} times)" if (ev.get("count") or 1) > 1 else ""))
    elif ev.get("layer") == "probe":
        text = (f"correlate: probe {ev.get('function')} in {ev.get('comm')} pid {ev.get('pid')}"
                f" tid {ev.get('tid')} {_args_text(ev.get('args') or {})}")
    elif ev.get("layer") == "log":
        text = (f"correlate: log {ev.get('source')} {ev.get('level') or ''} {ev.get('domain') or ''}: "
                f"{ev.get('message')}")
    else:
        text = f"correlate: {ev.get('kind')} {ev.get('src')} -> {ev.get('dst')}"
    return safe_text(" ".join(text.split()), MAX_COMMENT_CHARS)


def comments_by_frame(events: Iterable[dict], source: str, also: Iterable[str] = ()) -> dict[int, list[str]]:
    """frame number -> comments, from the findings among `events` (for packets of `source`, or
    of the names in `also`: what a saved timeline called the same capture, `stdin` say).

    A folded finding's `finding.update` adds the evidence of its repeats (the second brick of
    a firewall problem) and its final count."""
    findings, updates = [], {}
    for ev in events:
        if ev.get("layer") != "finding":
            continue
        if ev.get("kind") == "finding":
            findings.append(ev)
        elif ev.get("kind") == "finding.update" and ev.get("id"):
            updates[str(ev["id"])] = ev
    sources = {source, *also}
    out: dict[int, list[str]] = defaultdict(list)
    for ev in findings:
        update = updates.get(str(ev.get("id"))) or {}
        if update.get("count"):
            ev = {**ev, "count": update["count"]}
        evidence = [e for e in list(ev.get("evidence") or []) + list(update.get("evidence") or [])
                    if isinstance(e, dict)]
        frames = sorted({e["frame"] for e in evidence
                         if e.get("layer") == "wire" and e.get("source") in sources
                         and isinstance(e.get("frame"), int)})
        if not frames:
            continue
        lines = [comment_for(ev)]
        lines += [comment_for(e, ev) for e in evidence if e.get("layer") in ("probe", "log")]
        for frame in frames:
            for line in lines:
                if line not in out[frame]:
                    out[frame].append(line)
    return dict(out)


def annotate_pcapng(capture_path: str, events: Iterable[dict], out_path: str,
                    source: str | None = None, diag: Diagnostics | None = None,
                    also: Iterable[str] = ()) -> dict:
    """Copy `capture_path` to `out_path` as pcapng, commenting the packets findings point at.

    `source` is the name the capture's events carry (default: the file's base name, as the
    decoder names it). Returns {"packets", "annotated", "comments", "placeholders"}."""
    source = source or os.path.basename(capture_path)
    diag = diag or Diagnostics(source)
    comments = comments_by_frame(events, source, also)
    stats = {"packets": 0, "annotated": 0, "comments": 0, "placeholders": 0}
    # Written beside the real file and renamed over it, so a failed run leaves no half file;
    # a symlink is followed (its target replaced, the link kept), and what is not a regular
    # file (a device, a FIFO) is written in place: a rename would replace the node itself.
    target = os.path.realpath(out_path)
    if os.path.exists(target) and not os.path.isfile(target):
        _copy(capture_path, target, comments, stats, diag)
    else:
        tmp = target + ".part"
        try:
            _copy(capture_path, tmp, comments, stats, diag)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        os.replace(tmp, target)
    missing = [n for n in comments if n > stats["packets"] + stats["placeholders"]]
    if missing:
        diag.skip("finding evidence frames beyond the end of the capture", f"packet {min(missing)}")
    return stats


def _copy(capture_path: str, tmp: str, comments: dict[int, list[str]], stats: dict,
          diag: Diagnostics) -> None:
    interfaces: dict[int, int] = {}
    with open(tmp, "wb") as out:
        out.write(section_header())

        def iface_for(linktype: int) -> int:
            if linktype not in interfaces:
                interfaces[linktype] = len(interfaces)
                out.write(interface_block(linktype))
            return interfaces[linktype]

        expected = 1
        last_ns = 0
        last_link = 1
        for frame in open_capture(capture_path, diag):
            while expected < frame.number:   # the reader skipped a damaged packet: keep numbering
                out.write(packet_block(iface_for(last_link), last_ns, b"", 0,
                                       [f"correlate: packet {expected} of the input was damaged and left out"]))
                stats["placeholders"] += 1
                expected += 1
            notes = comments.get(frame.number, [])
            orig_len = getattr(frame, "orig_len", None) or len(frame.data)
            out.write(packet_block(iface_for(frame.linktype), frame.time_ns, frame.data, orig_len, notes))
            if notes:
                stats["annotated"] += 1
                stats["comments"] += min(len(notes), MAX_COMMENTS_PER_PACKET)
            stats["packets"] += 1
            last_ns, last_link, expected = frame.time_ns, frame.linktype, frame.number + 1
