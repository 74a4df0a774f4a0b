"""Properties: reassembly is exact under any segmentation, reordering and duplication; loss
only ever shows as gaps of the right size; hostile bytes never crash or hang the readers."""
from __future__ import annotations

import gzip
import io
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from correlate.diagnostics import Diagnostics
from correlate.errors import InputError
from correlate.wire.capture import open_capture_stream
from correlate.wire.model import Frame
from correlate.wire.packet import ACK, FIN, PSH, RST, SYN, parse_frame
from correlate.wire.tcp import TcpTracker

from .test_tcp import Talk

# CORRELATE_EXAMPLES=5000 for a deeper run than the everyday one
SETTINGS = settings(max_examples=int(os.environ.get("CORRELATE_EXAMPLES", "300")), deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow])


class StreamSink:
    """Records (from_client, 'data', bytes) and (from_client, 'gap', n) in delivery order."""

    def __init__(self):
        self.parts: list[tuple[bool, str, object]] = []
        self.closed = 0

    def on_data(self, conn, from_client, time_ns, data):
        self.parts.append((from_client, "data", bytes(data)))
        return []

    def on_gap(self, conn, from_client, time_ns, missing):
        self.parts.append((from_client, "gap", missing))
        return []

    def on_close(self, conn, time_ns):
        self.closed += 1
        return []

    def rebuild(self, from_client: bool) -> list[bytes | int]:
        return [p for fc, _, p in self.parts if fc == from_client]


@st.composite
def segmented_stream(draw):
    """A byte stream, cut into segments, with retransmitted ranges, in a shuffled order."""
    data = draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=40))) | {0, len(data)})
    pieces = [(a, b) for a, b in zip(cuts, cuts[1:])]
    extra = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 400)), max_size=10))
    pieces += [(a, min(len(data), a + n)) for a, n in extra]          # overlapping retransmissions
    order = draw(st.permutations(pieces))
    isn = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 4000, 2**32 - 1)))
    return data, order, isn


def _feed(tracker, frames):
    for f in frames:
        tracker.feed(f)


@SETTINGS
@given(segmented_stream())
def test_any_segmentation_reordering_duplication_reassembles_exactly(case):
    data, order, isn = case
    t = Talk(cisn=isn, sisn=(isn * 7 + 3) & 0xFFFFFFFF)
    frames = t.handshake() + [t.c(a, data[a:b]) for a, b in order]
    frames += [t.c(len(data), b"", flags=FIN | ACK), t.s(0, b"", flags=FIN | ACK, ack=len(data) + 1)]
    sink = StreamSink()
    tracker = TcpTracker("p", sink, Diagnostics("p"))
    _feed(tracker, frames)
    tracker.finish()
    assert b"".join(sink.rebuild(True)) == data
    assert all(kind == "data" for _, kind, _ in sink.parts)
    assert sink.closed == 1
    assert tracker._buffered_total == 0 and not tracker._conns


@SETTINGS
@given(segmented_stream(), st.data())
def test_loss_shows_as_gaps_and_every_delivered_byte_is_right(case, draw):
    data, order, isn = case
    kept = [p for p in order if draw.draw(st.booleans())]
    t = Talk(cisn=isn)
    frames = t.handshake() + [t.c(a, data[a:b]) for a, b in kept]
    frames += [t.c(len(data), b"", flags=FIN | ACK), t.s(0, b"", flags=FIN | ACK, ack=len(data) + 1)]
    sink = StreamSink()
    tracker = TcpTracker("p", sink, Diagnostics("p"), max_buffered=draw.draw(st.sampled_from([64, 1 << 22])))
    _feed(tracker, frames)
    tracker.finish()
    pos = 0
    for part in sink.rebuild(True):
        if isinstance(part, int):
            assert part > 0
            pos += part
        else:
            assert part == data[pos:pos + len(part)]
            pos += len(part)
    assert pos == len(data)          # every byte delivered or counted missing, exactly once


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, 0, 0xFF]),
                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=50),
                          st.integers(0, 3)), max_size=60))
def test_arbitrary_segments_never_break_the_tracker(segments):
    sink = StreamSink()
    tracker = TcpTracker("p", sink, Diagnostics("p"), max_connections=3, syn_timeout_ns=5_000_000)
    talks = [Talk(client=("10.0.0.1", 1000 + i), server=("10.0.0.2", 24007 + i)) for i in range(4)]
    for from_client, flags, seq, ack, payload, which in segments:
        tracker.feed(talks[which].frame(from_client, flags, seq, ack, payload))
        assert len(tracker._lru) <= 3
    tracker.finish()


MAGICS = [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a", b"\x1f\x8b"]
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
PCAPNG_START = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000"
                             "01000000140000000100000000000400140000")


hostile_bytes = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda m, b: m + b, st.sampled_from(MAGICS), st.binary(max_size=2000)),
    st.builds(lambda b: PCAP_HEADER + b, st.binary(max_size=2000)),
    st.builds(lambda b: PCAPNG_START + b, st.binary(max_size=2000)),
    st.builds(lambda b: gzip.compress(PCAP_HEADER + b), st.binary(max_size=500)),
    st.builds(lambda b, cut: gzip.compress(PCAP_HEADER + b)[:cut], st.binary(max_size=500), st.integers(0, 600)),
)


@SETTINGS
@given(hostile_bytes)
def test_arbitrary_bytes_as_a_capture_raise_input_error_or_end_cleanly(data):
    diag = Diagnostics("junk")
    tracker = TcpTracker("junk", StreamSink(), diag)
    try:
        frames = open_capture_stream(io.BytesIO(data), "junk", diag)
    except InputError:
        return
    count = 0
    for frame in frames:
        count += 1
        assert len(frame.data) <= 256 * 1024
        tracker.feed(frame)
    tracker.finish()
    assert count <= len(data)


@SETTINGS
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]), st.binary(max_size=200))
def test_arbitrary_frames_decode_or_are_counted(linktype, data):
    diag = Diagnostics("f")
    before = sum(diag.counts.values())
    result = parse_frame(Frame(1, linktype, data, 1), diag)
    assert result is not None or sum(diag.counts.values()) == before + 1


class Dribble(io.RawIOBase):
    """A pipe that hands out the bytes in arbitrary small pieces, as a live writer does."""

    def __init__(self, data: bytes, sizes: list[int]):
        self.data, self.pos, self.sizes = data, 0, sizes or [1]

    def readable(self):
        return True

    def read1(self, n=-1):
        size = self.sizes[self.pos % len(self.sizes)]
        chunk = self.data[self.pos:self.pos + min(size, n if n > 0 else size)]
        self.pos += len(chunk)
        return chunk

    read = read1


def _capture_bytes(n_packets: int, payload: bytes) -> bytes:
    from .test_capture import PKT, T0, epb, idb, pcap_bytes, shb
    if n_packets % 2:
        return pcap_bytes([(T0, i, PKT + payload) for i in range(n_packets)], nano=True)
    return shb() + idb(1, tsresol=9) + b"".join(epb(0, i, PKT + payload) for i in range(n_packets))


@SETTINGS
@given(st.integers(1, 30), st.binary(max_size=300), st.lists(st.integers(1, 700), min_size=1, max_size=20),
       st.booleans())
def test_frames_do_not_depend_on_how_the_bytes_arrive(n_packets, payload, sizes, compress):
    data = _capture_bytes(n_packets, payload)
    if compress:
        data = gzip.compress(data)
    whole = [(f.time_ns, f.data) for f in open_capture_stream(io.BytesIO(data), "w", Diagnostics("w"))]
    dribbled = [(f.time_ns, f.data) for f in open_capture_stream(Dribble(data, sizes), "d", Diagnostics("d"))]
    assert len(whole) == n_packets and dribbled == whole
