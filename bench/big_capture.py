"""A large workload capture from a committed one, without a lab: N copies, one after another.

Copy k has every IPv4 address a.b.c.d rewritten to a.b.(c+k).d and its times shifted past the
previous copy, so each copy is its own set of connections (the tracker sees new 4-tuples, not
a replay of old sequence numbers) and the output is one realistic, time-ordered capture.
Checksums are left as they are: neither correlate nor tshark checks them by default.

    python bench/big_capture.py [--copies 18] [--source tests/captures/busy-healthy.pcap.gz] OUT
"""
from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# link type -> offset of the IP header (the only link types the committed captures use)
IP_OFFSET = {1: 14, 113: 16, 276: 20, 228: 0, 101: 0}


def records(data: bytes):
    """(header bytes, packet bytes) of every record of a classic pcap."""
    pos = 24
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    rec = struct.Struct(order + "IIII")
    while pos + 16 <= len(data):
        sec, frac, caplen, wirelen = rec.unpack_from(data, pos)
        yield (sec, frac, wirelen), data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen


def rewrite(pkt: bytes, off: int, k: int) -> bytes:
    if len(pkt) < off + 20 or pkt[off] >> 4 != 4:
        return pkt
    b = bytearray(pkt)
    for at in (off + 14, off + 18):                  # the third byte of src and dst
        b[at] = (b[at] + k) & 0xFF
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=18)
    ap.add_argument("--source", type=Path, default=ROOT / "tests/captures/busy-healthy.pcap.gz")
    opts = ap.parse_args()
    raw = opts.source.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    if data[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"):
        raise SystemExit("big_capture: the source must be a microsecond pcap")
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    off = IP_OFFSET[linktype]
    recs = list(records(data))
    first = recs[0][0][0] * 1_000_000 + recs[0][0][1]
    span = recs[-1][0][0] * 1_000_000 + recs[-1][0][1] - first + 1_000_000
    with open(opts.out, "wb") as f:
        f.write(data[:4] + data[4:24])
        rec = struct.Struct(order + "IIII")
        for k in range(opts.copies):
            for (sec, frac, wirelen), pkt in recs:
                us = sec * 1_000_000 + frac + k * span
                f.write(rec.pack(us // 1_000_000, us % 1_000_000, len(pkt), wirelen))
                f.write(rewrite(pkt, off, k))
    print(f"{opts.out}: {opts.copies * len(recs)} packets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
