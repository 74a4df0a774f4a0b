"""Capture reading: pcap (us/ns, both byte orders), pcapng (interfaces, resolutions, sections,
SPB), gzip, streaming from a pipe, and damaged input."""
from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import dpkt
import pytest

from correlate.diagnostics import Diagnostics
from correlate.errors import InputError
from correlate.wire.capture import open_capture, open_capture_stream

from .test_packet import ethernet, tcp_ip

T0 = 1_763_900_000                         # a 2025 timestamp, seconds
PKT = ethernet(tcp_ip("10.0.0.1", 40000, "10.0.0.2", 24007, payload=b"data"))


# ---- builders ----------------------------------------------------------------------------

def pcap_bytes(records, order="<", nano=False, linktype=1) -> bytes:
    """records: (seconds, fraction, data) with fraction in us or ns."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for sec, frac, data in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def _opt(code: int, value: bytes, le: bool = True):
    cls = dpkt.pcapng.PcapngOptionLE if le else dpkt.pcapng.PcapngOption
    return cls(code=code, data=value)


def idb(linktype: int, tsresol: int | None = None, tsoffset: int | None = None, le: bool = True):
    opts = []
    if tsresol is not None:
        opts.append(_opt(9, bytes([tsresol]), le))
    if tsoffset is not None:
        opts.append(_opt(14, struct.pack("<q" if le else ">q", tsoffset), le))
    if opts:
        opts.append(_opt(0, b"", le))
    cls = dpkt.pcapng.InterfaceDescriptionBlockLE if le else dpkt.pcapng.InterfaceDescriptionBlock
    return bytes(cls(linktype=linktype, snaplen=262144, opts=opts))


def epb(iface: int, ticks: int, data: bytes, le: bool = True) -> bytes:
    cls = dpkt.pcapng.EnhancedPacketBlockLE if le else dpkt.pcapng.EnhancedPacketBlock
    return bytes(cls(iface_id=iface, ts_high=ticks >> 32, ts_low=ticks & 0xFFFFFFFF,
                     caplen=len(data), pkt_len=len(data), pkt_data=data))


def shb(le: bool = True) -> bytes:
    return bytes(dpkt.pcapng.SectionHeaderBlockLE() if le else dpkt.pcapng.SectionHeaderBlock())


def spb(data: bytes, le: bool = True) -> bytes:
    o = "<" if le else ">"
    pad = b"\0" * (-len(data) % 4)
    blen = 16 + len(data) + len(pad)
    return struct.pack(o + "III", 3, blen, len(data)) + data + pad + struct.pack(o + "I", blen)


def read_all(data: bytes, source: str = "test"):
    diag = Diagnostics(source)
    frames = list(open_capture_stream(io.BytesIO(data), source, diag))
    return frames, diag


# ---- pcap --------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_both_orders_and_resolutions_are_exact(order, nano):
    frac = 999_999_999 if nano else 999_999
    data = pcap_bytes([(T0, frac, PKT), (T0 + 1, 1, PKT[:20])], order=order, nano=nano)
    frames, diag = read_all(data)
    unit = 1 if nano else 1000
    assert [f.time_ns for f in frames] == [T0 * 10**9 + frac * unit, (T0 + 1) * 10**9 + unit]
    assert [f.number for f in frames] == [1, 2]
    assert frames[0].data == PKT and frames[1].data == PKT[:20]
    assert all(f.linktype == 1 for f in frames)
    assert diag.fatal is None and not diag.counts


def test_pcap_written_by_dpkt():
    buf = io.BytesIO()
    writer = dpkt.pcap.Writer(buf, linktype=dpkt.pcap.DLT_LINUX_SLL2)
    writer.writepkt(PKT, ts=T0 + 0.5)
    frames, _ = read_all(buf.getvalue())
    assert len(frames) == 1 and frames[0].linktype == 276 and frames[0].time_ns == T0 * 10**9 + 500_000_000


def test_linktype_fcs_bits_are_masked():
    data = bytearray(pcap_bytes([(T0, 0, PKT)]))
    data[20:24] = struct.pack("<I", 1 | (1 << 28) | (2 << 26))
    frames, _ = read_all(bytes(data))
    assert frames[0].linktype == 1


# ---- pcapng ------------------------------------------------------------------------------

def test_pcapng_two_interfaces_with_own_linktype_resolution_and_offset():
    data = (shb()
            + idb(1)                                  # default resolution: microseconds
            + idb(101, tsresol=9, tsoffset=-100)      # nanoseconds, clock 100 s ahead
            + idb(276, tsresol=0x80 | 20)             # 2^-20 s per tick
            + epb(0, T0 * 10**6 + 3, PKT)
            + epb(1, (T0 + 100) * 10**9 + 123_456_789, PKT[14:])
            + epb(2, (T0 << 20) + (1 << 19) + 1, b"\0" * 20 + PKT[14:]))
    frames, diag = read_all(data)
    assert [f.linktype for f in frames] == [1, 101, 276]
    assert frames[0].time_ns == T0 * 10**9 + 3_000
    assert frames[1].time_ns == T0 * 10**9 + 123_456_789
    # 2^-20 s ticks: half a second plus one tick (953.67 ns, floored)
    assert frames[2].time_ns == T0 * 10**9 + 500_000_000 + 953
    assert frames[1].data == PKT[14:]
    assert [f.number for f in frames] == [1, 2, 3]
    assert diag.fatal is None


def test_pcapng_decimal_resolution_finer_than_ns_and_coarser():
    data = (shb() + idb(1, tsresol=10) + idb(1, tsresol=3)
            + epb(0, T0 * 10**10 + 59, PKT) + epb(1, T0 * 1000 + 7, PKT))
    frames, _ = read_all(data)
    assert [f.time_ns for f in frames] == [T0 * 10**9 + 5, T0 * 10**9 + 7_000_000]


def test_pcapng_several_sections_and_byte_orders_reset_interfaces():
    data = (shb() + idb(1, tsresol=9) + epb(0, T0 * 10**9, PKT)
            + shb(le=False) + idb(101, le=False) + epb(0, T0 * 10**6 + 1, PKT[14:], le=False)
            + spb(PKT[14:], le=False))
    frames, diag = read_all(data)
    assert [(f.linktype, f.time_ns) for f in frames] == [
        (1, T0 * 10**9), (101, T0 * 10**9 + 1000), (101, T0 * 10**9 + 1000)]
    assert frames[2].data == PKT[14:]     # the SPB: previous time, interface 0, padding removed
    assert diag.fatal is None


def test_pcapng_packet_on_undeclared_interface_is_skipped():
    data = shb() + idb(1) + epb(3, 1, PKT) + epb(0, 2, PKT)
    frames, diag = read_all(data)
    assert [f.number for f in frames] == [2]
    assert diag.counts["pcapng packets on an undeclared interface"] == 1


def test_pcapng_written_by_dpkt_writer_with_two_interfaces():
    buf = io.BytesIO()
    idbs = [dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=1, snaplen=65535),
            dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=113, snaplen=65535)]
    writer = dpkt.pcapng.Writer(buf, idb=idbs)
    writer.writepkt(dpkt.pcapng.EnhancedPacketBlockLE(iface_id=1, ts_high=0, ts_low=10, pkt_data=PKT))
    frames, _ = read_all(buf.getvalue())
    assert [(f.linktype, f.time_ns, f.data) for f in frames] == [(113, 10_000, PKT)]


# ---- gzip and streaming --------------------------------------------------------------------

def test_gzip_is_detected_by_magic(tmp_path):
    path = tmp_path / "c.pcap.gz"
    records = [(T0, i, PKT) for i in range(1000)]
    path.write_bytes(gzip.compress(pcap_bytes(records)))
    diag = Diagnostics(str(path))
    frames = list(open_capture(str(path), diag))
    assert len(frames) == 1000 and frames[-1].time_ns == T0 * 10**9 + 999_000
    assert diag.fatal is None


def test_concatenated_gzip_members():
    raw = pcap_bytes([(T0, 1, PKT), (T0, 2, PKT)])
    frames, _ = read_all(gzip.compress(raw[:40]) + gzip.compress(raw[40:]))
    assert len(frames) == 2


def _next_with_timeout(it, seconds=5.0):
    """next(it) in a thread, so a reader that waits for end of input fails instead of hanging."""
    box = []
    worker = threading.Thread(target=lambda: box.append(next(it, None)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, "no frame was yielded while the writer kept the pipe open"
    return box[0]


@pytest.mark.parametrize("compress", [False, True])
def test_pipe_frames_arrive_before_the_writer_closes(compress):
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")          # a BufferedReader, like sys.stdin.buffer
    writer = os.fdopen(write_fd, "wb", buffering=0)
    stream = pcap_bytes([(T0, 1, PKT), (T0, 2, PKT)])
    try:
        if compress:
            comp = zlib.compressobj(wbits=31)        # gzip framing, flushed like a live writer

            def send(chunk: bytes) -> None:
                writer.write(comp.compress(chunk) + comp.flush(zlib.Z_SYNC_FLUSH))
        else:
            send = writer.write
        send(stream[:24 + 16 + len(PKT)])      # header and one record; the pipe stays open
        frames = open_capture_stream(reader, "stdin", Diagnostics("stdin"))
        first = _next_with_timeout(frames)
        assert first.number == 1 and first.data == PKT
        send(stream[24 + 16 + len(PKT):])
        second = _next_with_timeout(frames)
        assert second.number == 2
        if compress:
            writer.write(comp.flush())
        writer.close()
        assert _next_with_timeout(frames) is None          # end of input ends the frames
    finally:
        if not writer.closed:
            writer.close()
        reader.close()


def test_stdin_dash_reads_sys_stdin(monkeypatch):
    class FakeStdin:
        buffer = io.BytesIO(pcap_bytes([(T0, 1, PKT)]))
    monkeypatch.setattr("sys.stdin", FakeStdin)
    frames = list(open_capture("-", Diagnostics("stdin")))
    assert len(frames) == 1


# ---- damage ------------------------------------------------------------------------------

def test_truncated_pcap_keeps_what_came_before():
    data = pcap_bytes([(T0, 1, PKT), (T0, 2, PKT), (T0, 3, PKT)])
    cut = len(data) - 10
    frames, diag = read_all(data[:cut])
    assert [f.number for f in frames] == [1, 2]
    offset = 24 + 2 * (16 + len(PKT))
    assert diag.fatal == f"truncated in packet 3 at byte offset {offset}"


def test_truncated_inside_record_header():
    data = pcap_bytes([(T0, 1, PKT)]) + b"\0" * 7
    frames, diag = read_all(data)
    assert len(frames) == 1 and diag.fatal.startswith("truncated in packet 2")


def test_truncated_pcapng():
    data = shb() + idb(1) + epb(0, 1, PKT) + epb(0, 2, PKT)
    frames, diag = read_all(data[:-8])
    assert len(frames) == 1 and diag.fatal.startswith("truncated in packet 2 at byte offset")


def test_truncated_gzip_keeps_what_came_before():
    data = gzip.compress(pcap_bytes([(T0, i, PKT) for i in range(50)]))
    frames, diag = read_all(data[: len(data) // 2])
    assert 0 < len(frames) < 50 and diag.fatal


def test_gzip_damaged_after_its_header_keeps_what_came_before():
    """zlib drops the output of a step that meets damage: a damaged checksum at the end of a
    committed capture's gzip (found by the fuzzer) must not cost its header and packets."""
    raw = (Path(__file__).parent / "captures" / "atime-minus-one.pcap").read_bytes()
    data = bytearray(gzip.compress(raw))
    data[-8] ^= 0xFF                                # the CRC32 of the member
    frames, diag = read_all(bytes(data))
    assert len(frames) > 50 and diag.fatal.startswith("the gzip data is cut short or corrupt")


def test_gzip_without_its_end_is_reported_even_at_a_record_boundary():
    comp = zlib.compressobj(wbits=31)
    data = comp.compress(pcap_bytes([(T0, 1, PKT), (T0, 2, PKT)])) + comp.flush(zlib.Z_SYNC_FLUSH)
    frames, diag = read_all(data)
    assert len(frames) == 2
    whole = 24 + 2 * (16 + len(PKT))       # file header, two records: all of it was read
    assert diag.fatal == f"the gzip data is cut short or corrupt (after {whole} bytes of decompressed data)"


def test_absurd_caplen_is_corruption_not_an_allocation():
    data = pcap_bytes([(T0, 1, PKT)]) + struct.pack("<IIII", T0, 2, 0xFFFFFFF0, 0xFFFFFFF0) + b"x" * 64
    frames, diag = read_all(data)
    assert len(frames) == 1
    assert "corrupt record header in packet 2" in diag.fatal and "4294967280" in diag.fatal


def test_absurd_pcapng_block_length():
    data = shb() + idb(1) + epb(0, 1, PKT) + struct.pack("<II", 6, 0x7FFFFFF0) + b"\0" * 64
    frames, diag = read_all(data)
    assert len(frames) == 1 and "corrupt block length 2147483632" in diag.fatal


def test_pcapng_epb_caplen_beyond_its_block_is_skipped():
    bad = bytearray(epb(0, 1, PKT))
    struct.pack_into("<I", bad, 20, 100_000)
    frames, diag = read_all(shb() + idb(1) + bytes(bad) + epb(0, 2, PKT))
    assert [f.number for f in frames] == [2]
    assert diag.counts["pcapng packet blocks with a bad captured length"] == 1


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3", b"GET / HTTP/1.1\r\n\r\n", b"\x1f\x8bnot gzip at all",
                                  gzip.compress(b"hello world, not a capture"),
                                  b"\xd4\xc3\xb2\xa1\x02\x00"])
def test_not_a_capture_raises_input_error(data):
    with pytest.raises(InputError) as info:
        list(open_capture_stream(io.BytesIO(data), "junk.bin", Diagnostics("junk.bin")))
    assert str(info.value).startswith("junk.bin: ")


def test_not_a_capture_names_the_magic():
    with pytest.raises(InputError, match=r"not a pcap or pcapng capture \(starts with 47 45 54 20"):
        open_capture_stream(io.BytesIO(b"GET / HTTP/1.1"), "x", Diagnostics("x"))


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        open_capture(str(tmp_path / "nope.pcap"), Diagnostics("nope"))


def test_original_length_is_kept_when_the_snaplen_cut_the_packet():
    cut = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1) + \
        struct.pack("<IIII", 1, 0, 4, 1500) + b"abcd"
    (frame,), _ = read_all(cut)
    assert frame.data == b"abcd" and frame.orig_len == 1500
    body = struct.pack("<IIIII", 0, 0, 1, 4, 9000) + b"wxyz"   # dpkt would rewrite pkt_len
    block = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    (frame,), _ = read_all(shb() + idb(1) + block)
    assert frame.data == b"wxyz" and frame.orig_len == 9000


# ---- dpkt as the oracle ------------------------------------------------------------------

COMMITTED = sorted((Path(__file__).parent / "captures").glob("*.pcap"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_capture_reads_as_dpkt_reads_it(path):
    """Our reader against an independent one: same packets, bytes and timestamps."""
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        theirs = [(round(ts * 1e6) * 1000, bytes(buf)) for ts, buf in reader]
        linktype = reader.datalink()
    diag = Diagnostics(path.name)
    ours = list(open_capture(str(path), diag))
    assert [(fr.time_ns, fr.data) for fr in ours] == theirs and theirs
    assert {fr.linktype for fr in ours} == {linktype}
    assert not diag.counts


def test_runtime_never_imports_dpkt(tmp_path):
    """dpkt is a test dependency only: decoding, analysing and writing the annotated pcapng
    work with it unimportable."""
    capture = COMMITTED[0]
    code = ("import sys; sys.modules['dpkt'] = None\n"
            "from correlate.cli import main\n"
            "sys.argv = ['correlate', 'timeline', '--pcapng', sys.argv[1], sys.argv[2]]\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.pcapng"), str(capture)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.pcapng").stat().st_size > 0
