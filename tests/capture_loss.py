"""Capture loss made on purpose: copies of real captures without some of their packets, as a
busy host's tcpdump would leave them (random drops, or a burst of consecutive packets).

dpkt reads and writes the files, independently of correlate's own reader; gzip'd captures
are read through gzip, and the copy is written as plain classic pcap (pcapng inputs become
classic pcap with the same link type).
"""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import dpkt


def _packets(src: Path):
    opener = gzip.open if str(src).endswith(".gz") else open
    with opener(src, "rb") as f:
        head = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        yield linktype
        for ts, buf in reader:
            yield ts, buf


def _write(src: Path, dst: Path, keep) -> tuple[int, int]:
    """Copy the packets `keep(index)` accepts; (packets kept, packets dropped)."""
    packets = _packets(src)
    linktype = next(packets)
    kept = dropped = 0
    with open(dst, "wb") as out:
        writer = dpkt.pcap.Writer(out, snaplen=262144, linktype=linktype, nano=True)
        for i, (ts, buf) in enumerate(packets):
            if keep(i):
                writer.writepkt(buf, ts)
                kept += 1
            else:
                dropped += 1
    return kept, dropped


def drop_packets(src: Path, dst: Path, rate: float, seed: int) -> tuple[int, int]:
    """Drop each packet with probability `rate`."""
    rng = random.Random(seed)
    return _write(src, dst, lambda i: rng.random() >= rate)


def drop_burst(src: Path, dst: Path, start: int, count: int) -> tuple[int, int]:
    """Drop `count` consecutive packets from index `start` on."""
    return _write(src, dst, lambda i: not start <= i < start + count)


def packet_count(src: Path) -> int:
    packets = _packets(src)
    next(packets)
    return sum(1 for _ in packets)
