"""TCP tracking on synthetic conversations: handshake outcomes, reassembly, gaps, close."""
from __future__ import annotations

from correlate.diagnostics import Diagnostics
from correlate.events import make_event
from correlate.wire.model import Frame
from correlate.wire.packet import ACK, FIN, PSH, RST, SYN
from correlate.wire.tcp import TcpTracker, sender_is_server

from .test_packet import icmp_unreachable, link, tcp_ip

T0 = 1_763_900_000 * 10**9
MS = 1_000_000


class RecordingSink:
    """Keeps every call; answers each with one event so the tracker's merging can be checked."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.streams: dict[tuple[int, bool], bytearray] = {}

    def on_data(self, conn, from_client, time_ns, data):
        assert data, "empty deliveries are noise"
        self.calls.append(("data", conn.number, from_client, bytes(data)))
        self.streams.setdefault((conn.number, from_client), bytearray()).extend(data)
        return [make_event(time_ns, "wire", "sink.data", "t", conn=conn.number, n=len(data))]

    def on_gap(self, conn, from_client, time_ns, missing):
        self.calls.append(("gap", conn.number, from_client, missing))
        self.streams.setdefault((conn.number, from_client), bytearray()).extend(b"?" * missing)
        return [make_event(time_ns, "wire", "sink.gap", "t", conn=conn.number, missing=missing)]

    def on_close(self, conn, time_ns):
        self.calls.append(("close", conn.number))
        return [make_event(time_ns, "wire", "sink.close", "t", conn=conn.number)]

    def stream(self, number, from_client=True) -> bytes:
        return bytes(self.streams.get((number, from_client), b""))


class Talk:
    """Builds the frames of one conversation with running time and frame numbers."""

    def __init__(self, client=("10.0.0.1", 40000), server=("10.0.0.2", 24007), cisn=1000,
                 sisn=5000, linktype=101, numbers=None):
        self.client, self.server = client, server
        self.cisn, self.sisn = cisn, sisn
        self.linktype = linktype
        self.t = T0
        self.numbers = numbers if numbers is not None else [0]

    def frame(self, from_client: bool, flags: int, seq: int, ack: int = 0, payload: bytes = b"",
              dt: int = MS, cut: int = 0) -> Frame:
        self.t += dt
        self.numbers[0] += 1
        (sip, sport), (dip, dport) = (self.client, self.server) if from_client else (self.server, self.client)
        pkt = tcp_ip(sip, sport, dip, dport, flags=flags, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                     payload=payload)
        data = link(pkt, self.linktype)
        return Frame(self.t, self.linktype, data[:len(data) - cut], self.numbers[0])

    def handshake(self) -> list[Frame]:
        return [self.frame(True, SYN, self.cisn),
                self.frame(False, SYN | ACK, self.sisn, self.cisn + 1),
                self.frame(True, ACK, self.cisn + 1, self.sisn + 1)]

    def c(self, offset: int, payload: bytes, flags: int = ACK | PSH, ack: int = 0, **kw) -> Frame:
        """Client data at byte `offset` of its stream."""
        return self.frame(True, flags, self.cisn + 1 + offset, self.sisn + 1 + ack, payload, **kw)

    def s(self, offset: int, payload: bytes, flags: int = ACK | PSH, ack: int = 0, **kw) -> Frame:
        return self.frame(False, flags, self.sisn + 1 + offset, self.cisn + 1 + ack, payload, **kw)


def run(frames, *, finish=True, **kw):
    sink, diag = RecordingSink(), Diagnostics("t")
    tracker = TcpTracker("cap.pcap", sink, diag, **kw)
    events = []
    for f in frames:
        events.extend(tracker.feed(f))
    if finish:
        events.extend(tracker.finish())
    return events, sink, diag


def kinds(events):
    return [e["kind"] for e in events if e["kind"].startswith("tcp.")]


# ---- handshake outcomes --------------------------------------------------------------------

def test_half_close_is_reported_at_the_fin_and_the_later_rst_too():
    """A client giving up on a hung brick: it FINs while the server's kernel ACKed its call
    but the server process never answered; the late answer comes on the half-closed
    connection and the client RSTs it."""
    t = Talk()
    frames = t.handshake() + [
        t.c(0, b"ping", ack=0), t.s(0, b"", flags=ACK, ack=4),      # ACKed, unanswered
        t.c(4, b"", flags=FIN | ACK, ack=0),
        t.s(0, b"late", ack=5), t.c(5, b"", flags=RST)]
    events, sink, diag = run(frames)
    assert kinds(events) == ["tcp.connect", "tcp.close", "tcp.close"]
    half, rst = (e for e in events if e["kind"] == "tcp.close")
    assert (half["reason"], half["by"], half["half"], half["unacked_bytes"]) == ("fin", "client", True, 0)
    assert half["frame"] == 6
    assert (rst["reason"], rst["by"]) == ("rst", "client")
    assert sink.stream(1, False) == b"late"     # the half-closed side still delivers


def test_fin_with_unacknowledged_data_says_how_much():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"call-bytes", ack=0), t.c(10, b"", flags=FIN | ACK, ack=0)]
    events, _, _ = run(frames)
    close = [e for e in events if e["kind"] == "tcp.close"]
    assert len(close) == 1 and close[0]["unacked_bytes"] == 10

def test_connect_data_and_fin_close():
    t = Talk()
    frames = t.handshake() + [
        t.c(0, b"hello "), t.c(6, b"world"), t.s(0, b"reply", ack=11),
        t.c(11, b"", flags=FIN | ACK, ack=5), t.s(5, b"", flags=FIN | ACK, ack=12),
        t.c(12, b"", flags=ACK, ack=6)]
    events, sink, diag = run(frames)
    assert kinds(events) == ["tcp.connect", "tcp.close"]
    connect, close = (e for e in events if e["kind"].startswith("tcp."))
    assert connect["src"] == "10.0.0.1:40000" and connect["dst"] == "10.0.0.2:24007"
    assert connect["handshake_ns"] == MS and connect["frame"] == 2 and connect["conn"] == 1
    assert connect["layer"] == "wire" and connect["source"] == "cap.pcap" and connect["attempts"] == 1
    # The close is the first FIN (frame 7), not the FIN that completes it.
    assert close["by"] == "client" and close["reason"] == "fin" and close["frame"] == 7
    assert close["half"] is True and close["unacked_bytes"] == 0
    assert sink.stream(1) == b"hello world" and sink.stream(1, False) == b"reply"
    assert sink.calls[-1] == ("close", 1)
    assert [e["kind"] for e in events][-2:] == ["tcp.close", "sink.close"]
    assert not diag.counts


def test_events_are_in_time_order_and_include_the_sinks():
    t = Talk()
    events, _, _ = run(t.handshake() + [t.c(0, b"a"), t.s(0, b"b", ack=1)])
    assert [e["kind"] for e in events] == ["tcp.connect", "sink.data", "sink.data", "sink.close"]
    times = [e["time_ns"] for e in events]
    assert times == sorted(times)


def test_refused_by_rst():
    t = Talk(server=("10.0.0.2", 24009))
    events, sink, _ = run([t.frame(True, SYN, 1000), t.frame(False, RST | ACK, 0, 1001)])
    assert kinds(events) == ["tcp.refused"]
    ev = events[0]
    assert (ev["reason"], ev["src"], ev["dst"], ev["frame"]) == ("rst", "10.0.0.1:40000", "10.0.0.2:24009", 2)
    assert sink.calls == []


def test_refused_by_icmp_unreachable():
    t = Talk(client=("127.0.0.1", 41000), server=("127.0.0.2", 49152))
    syn = t.frame(True, SYN, 77)
    icmp = Frame(syn.time_ns + MS, 101, icmp_unreachable("127.0.0.2", syn.data, code=3), 2)
    events, _, _ = run([syn, icmp])
    assert kinds(events) == ["tcp.refused"]
    ev = events[0]
    assert ev["reason"] == "icmp" and ev["icmp_type"] == 3 and ev["icmp_code"] == 3
    assert ev["icmp_from"] == "127.0.0.2" and ev["dst"] == "127.0.0.2:49152" and ev["frame"] == 2


def test_icmp_for_another_connection_is_not_a_refusal():
    t = Talk(client=("127.0.0.1", 41000), server=("127.0.0.2", 49152))
    syn = t.frame(True, SYN, 77)
    other = tcp_ip("127.0.0.1", 41001, "127.0.0.2", 49152, flags=SYN, seq=77)
    icmp = Frame(syn.time_ns + MS, 101, icmp_unreachable("127.0.0.2", other), 2)
    events, _, _ = run([syn, icmp], finish=False)
    assert kinds(events) == []


def test_syn_timeout_by_the_capture_clock():
    t = Talk(server=("10.0.0.2", 49153))
    syn1 = t.frame(True, SYN, 1000, dt=0)
    syn2 = t.frame(True, SYN, 1000, dt=1000 * MS)
    other = Talk(client=("10.0.0.3", 5000), numbers=t.numbers)
    other.t = t.t
    early = other.frame(True, SYN, 1, dt=1500 * MS)           # 2.5 s after the first SYN
    late = other.frame(True, ACK | PSH, 2, payload=b"x", dt=1000 * MS)   # 3.5 s
    sink, diag = RecordingSink(), Diagnostics("t")
    tracker = TcpTracker("cap", sink, diag, syn_timeout_ns=3000 * MS)
    assert tracker.feed(syn1) == [] and tracker.feed(syn2) == [] and tracker.feed(early) == []
    events = tracker.feed(late)
    timeout = [e for e in events if e["kind"] == "tcp.timeout"]
    assert len(timeout) == 1
    assert timeout[0]["attempts"] == 2 and timeout[0]["waited_ns"] == 3500 * MS
    assert timeout[0]["dst"] == "10.0.0.2:49153" and timeout[0]["frame"] == 1
    assert timeout[0]["time_ns"] == late.time_ns
    # reported at once; SYNs retried after that are counted in one final report when the
    # connection is given up (here: the end of input), which points at the last SYN
    retry = t.frame(True, SYN, 1000, dt=0)
    assert [e for e in tracker.feed(retry) if e["kind"] == "tcp.timeout"] == []
    final = [e for e in tracker.finish() if e["kind"] == "tcp.timeout"]
    assert len(final) == 1 and final[0]["final"] is True and final[0]["attempts"] == 3
    assert final[0]["frame"] == retry.number and final[0]["syn_span_ns"] == retry.time_ns - syn1.time_ns


def test_retried_syn_unanswered_at_end_of_input_times_out():
    t = Talk()
    events, _, _ = run([t.frame(True, SYN, 5, dt=0), t.frame(True, SYN, 5, dt=1000 * MS)])
    assert kinds(events) == ["tcp.timeout"]
    assert events[0]["attempts"] == 2 and events[0]["waited_ns"] == 1000 * MS


def test_single_syn_at_end_of_input_is_not_a_timeout():
    t = Talk()
    events, _, _ = run([t.frame(True, SYN, 5)])
    assert kinds(events) == []


def test_late_syn_ack_still_connects():
    t = Talk()
    frames = [t.frame(True, SYN, 1, dt=0), t.frame(True, SYN, 1, dt=4000 * MS),
              t.frame(False, SYN | ACK, 9, 2, dt=100 * MS)]
    events, _, _ = run(frames, syn_timeout_ns=3000 * MS)
    assert kinds(events) == ["tcp.timeout", "tcp.connect"]
    assert events[1]["handshake_ns"] == 4100 * MS and events[1]["attempts"] == 2


def test_rst_on_established_connection_closes_it():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"req"), t.s(0, b"", flags=RST | ACK, ack=3)]
    events, sink, _ = run(frames)
    close = [e for e in events if e["kind"] == "tcp.close"]
    assert close[0]["by"] == "server" and close[0]["reason"] == "rst"
    assert sink.calls == [("data", 1, True, b"req"), ("close", 1)]


def test_ipv6_endpoints_are_bracketed():
    t = Talk(client=("fd00::1", 40000), server=("fd00::2", 24007), linktype=1)
    events, _, _ = run(t.handshake())
    assert events[0]["src"] == "[fd00::1]:40000" and events[0]["dst"] == "[fd00::2]:24007"


# ---- reassembly ----------------------------------------------------------------------------

def test_out_of_order_segments_are_delivered_in_order():
    t = Talk()
    frames = t.handshake() + [t.c(5, b"56789"), t.c(10, b"abc"), t.c(0, b"01234")]
    events, sink, _ = run(frames)
    assert sink.stream(1) == b"0123456789abc"
    assert [c for c in sink.calls if c[0] == "gap"] == []


def test_retransmissions_and_overlaps_are_delivered_once():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"0123"), t.c(0, b"0123"), t.c(2, b"23456"),
                              t.c(8, b"89"), t.c(6, b"6789X"), t.c(1, b"1")]
    _, sink, _ = run(frames)
    assert sink.stream(1) == b"0123456789X"


def test_sequence_wraparound():
    t = Talk(cisn=2**32 - 3, sisn=2**32 - 1)
    frames = t.handshake() + [t.c(0, b"abcd"), t.c(8, b"ijkl"), t.c(4, b"efgh"),
                              t.s(0, b"xyz", ack=12)]
    _, sink, _ = run(frames)
    assert sink.stream(1) == b"abcdefghijkl" and sink.stream(1, False) == b"xyz"


def test_gap_is_declared_once_the_peer_acknowledges_past_it():
    t = Talk()
    # client bytes 0..4 never captured; the server's ACK of 10 makes the loss certain
    frames = t.handshake() + [t.c(5, b"56789")]
    sink, diag = RecordingSink(), Diagnostics("t")
    tracker = TcpTracker("cap", sink, diag)
    for f in frames:
        tracker.feed(f)
    assert sink.calls == []                     # could still be reordering
    events = tracker.feed(t.s(0, b"ok", ack=10))
    assert sink.calls[:2] == [("gap", 1, True, 5), ("data", 1, True, b"56789")]
    assert [e["kind"] for e in events][:3] == ["tcp.gap", "sink.gap", "sink.data"]
    gap = events[0]     # the loss as an event, for detectors and outputs: which way, how much
    assert (gap["direction"], gap["missing"], gap["src"], gap["dst"]) == \
        ("to_server", 5, "10.0.0.1:40000", "10.0.0.2:24007")
    assert diag.counts["TCP gaps (bytes missing from the capture)"] == 1
    tracker.feed(t.c(0, b"01234"))             # the lost bytes show up late: not delivered twice
    assert sink.stream(1) == b"?????56789"


def test_a_reply_lost_with_the_syn_ack_is_a_gap_when_the_client_acknowledges_it():
    """Seen at 5 % drops (a GETSPEC to glusterd): the capture lost the SYN/ACK and the
    reply, saw the server's bare ACK of the call and the client's ACK of the reply. The
    server's stream starts where the client's first ACK says: the reply is a gap at once,
    not bytes the tracker never knew of (the call looked unanswered for a minute)."""
    for first_from_client in (True, False):
        t = Talk()
        syn, _syn_ack, ack = t.handshake()
        frames = [syn, ack, t.c(0, b"call")] if first_from_client else \
            [syn, t.s(0, b"", flags=ACK), t.c(0, b"call")]      # the server's first: a bare ACK
        frames.append(t.c(4, b"", flags=ACK, ack=7))        # acknowledges a 7-byte reply
        events, sink, _ = run(frames, finish=False)
        gaps = [e for e in events if e["kind"] == "tcp.gap"]
        assert [(g["direction"], g["missing"]) for g in gaps] == [("to_client", 7)], first_from_client
        assert ("gap", 1, False, 7) in sink.calls


def test_a_reply_lost_on_a_connection_joined_mid_stream_is_a_gap():
    """Seen at 1 % drops on busy-healthy.pcap: the capture joined a connection mid-stream,
    saw the brick's bare ACK of a call, lost the reply, and saw the client acknowledge it.
    The bare segment places the brick's stream, so the reply is a gap (the call looked
    unanswered). A keepalive probe placing it (seq one below) makes no gap."""
    t = Talk()
    frames = [t.c(0, b"call"), t.s(0, b"", flags=ACK, ack=4), t.c(4, b"", flags=ACK, ack=7)]
    events, sink, _ = run(frames, finish=False)
    assert [(e["direction"], e["missing"]) for e in events if e["kind"] == "tcp.gap"] == \
        [("to_client", 7)]
    t = Talk()
    keepalive = t.frame(False, ACK, t.sisn + 1 + 99, t.cisn + 1 + 4)     # seq = next byte - 1
    frames = [t.c(0, b"call"), keepalive, t.c(4, b"", flags=ACK, ack=100), t.s(100, b"reply")]
    events, sink, _ = run(frames, finish=False)
    assert not [e for e in events if e["kind"] == "tcp.gap"]
    assert sink.stream(1, from_client=False) == b"reply"


def test_bytes_an_rst_shows_were_sent_are_a_gap():
    """Seen at 5 % drops on tls-ca-mismatch12.pcap: the client's TLS alert was lost, its
    RST after it (seq past the alert) was kept: the 7 bytes are a gap, so the handshake
    failure without an alert is judged as loss, not as an unexplained failure. An RST
    right after the sender's FIN (seq one past it) is no gap."""
    t = Talk()
    frames = t.handshake() + [t.c(0, b"hello"), t.frame(True, RST | ACK, t.cisn + 1 + 12, t.sisn + 1)]
    events, sink, _ = run(frames, finish=False)
    assert [(e["direction"], e["missing"]) for e in events if e["kind"] == "tcp.gap"] == \
        [("to_server", 7)]
    t = Talk()
    frames = t.handshake() + [t.c(0, b"hello", flags=ACK | PSH | FIN),
                              t.frame(True, RST | ACK, t.cisn + 1 + 6, t.sisn + 1)]
    events, sink, _ = run(frames, finish=False)
    assert not [e for e in events if e["kind"] == "tcp.gap"]


def test_a_keepalive_probe_is_an_event_and_no_gap():
    """A bare segment one below the sender's next byte is a keepalive probe: the connection
    lives. Its answer (a bare ACK of the next byte) is nothing; no gap either way."""
    t = Talk()
    frames = t.handshake() + [t.c(0, b"call"), t.s(0, b"reply", ack=4),
                              t.frame(True, ACK, t.cisn + 1 + 3, t.sisn + 1 + 5, dt=20_000 * MS),
                              t.frame(False, ACK, t.sisn + 1 + 5, t.cisn + 1 + 4)]
    events, _, _ = run(frames, finish=False)
    assert kinds(events) == ["tcp.connect", "tcp.keepalive"]
    (ka,) = [e for e in events if e["kind"] == "tcp.keepalive"]
    assert ka["by"] == "client" and ka["src"] == "10.0.0.1:40000"


def test_gap_when_the_buffer_limit_is_hit():
    t = Talk()
    frames = t.handshake() + [t.c(100 + 10 * i, b"x" * 10) for i in range(5)]
    _, sink, _ = run(frames, finish=False, max_buffered=35 + 4 * 256)   # 4 segments fit, not 5
    assert sink.calls[0] == ("gap", 1, True, 100)
    assert sink.stream(1) == b"?" * 100 + b"x" * 50


def test_a_flood_of_tiny_out_of_order_segments_is_bounded():
    t = Talk()
    frames = t.handshake() + [t.c(10 + 2 * i, b"x") for i in range(20_000)]
    sink, diag = RecordingSink(), Diagnostics("t")
    tracker = TcpTracker("cap", sink, diag)
    for f in frames:
        tracker.feed(f)
        assert tracker._buffered_total <= 4 * 1024 * 1024 + 300
    assert diag.counts["TCP gaps (bytes missing from the capture)"] > 0


def test_tail_gap_at_fin_and_at_end_of_input():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"ab"), t.c(6, b"gh"), t.c(10, b"", flags=FIN | ACK),
                              t.s(0, b"", flags=FIN | ACK, ack=11)]
    events, sink, _ = run(frames, finish=False)
    assert sink.stream(1) == b"ab????gh??"
    assert kinds(events) == ["tcp.connect", "tcp.close", "tcp.gap", "tcp.gap"]
    assert [e["missing"] for e in events if e["kind"] == "tcp.gap"] == [4, 2]
    t2 = Talk()
    _, sink2, _ = run(t2.handshake() + [t2.c(0, b"ab"), t2.c(4, b"ef")])
    assert sink2.calls == [("data", 1, True, b"ab"), ("gap", 1, True, 2), ("data", 1, True, b"ef"),
                           ("close", 1)]


def test_snaplen_cut_payload_is_a_gap_right_away():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"0123456789", cut=4), t.c(10, b"next")]
    _, sink, _ = run(frames, finish=False)
    assert sink.calls == [("data", 1, True, b"012345"), ("gap", 1, True, 4), ("data", 1, True, b"next")]


def test_fin_ack_is_not_mistaken_for_a_gap():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"abc", flags=FIN | ACK | PSH), t.s(0, b"late", ack=4),
                              t.s(4, b"more", ack=4)]
    _, sink, _ = run(frames, finish=False)
    assert [c[0] for c in sink.calls] == ["data", "data", "data"]


# ---- mid-stream, bookkeeping ---------------------------------------------------------------

def test_midstream_start_guesses_the_server_by_port():
    assert sender_is_server(24007, 1023) and not sender_is_server(1023, 24007)
    assert sender_is_server(49152, 50000)            # both in the brick range: the lower
    assert not sender_is_server(40000, 49152)
    assert sender_is_server(22, 40000)               # neither: the lower port
    t = Talk(client=("10.0.0.1", 1023), server=("10.0.0.2", 49152))
    # the server speaks first in the capture
    events, sink, _ = run([t.s(0, b"reply"), t.c(0, b"call", ack=5), t.c(4, b"", flags=ACK, ack=5)])
    assert sink.stream(1, False) == b"reply" and sink.stream(1, True) == b"call"
    assert kinds(events) == []
    close = [e for e in events if e["kind"] == "sink.close"]
    assert len(close) == 1


def test_bare_acks_after_close_make_no_new_connection():
    t = Talk()
    frames = t.handshake() + [t.c(0, b"x"), t.c(1, b"", flags=FIN | ACK), t.s(0, b"", flags=FIN | ACK, ack=2),
                              t.c(2, b"", flags=ACK, ack=1), t.c(0, b"x")]
    events, sink, diag = run(frames)
    assert kinds(events) == ["tcp.connect", "tcp.close"]
    assert sink.calls == [("data", 1, True, b"x"), ("close", 1)]
    assert diag.counts["TCP segments after their connection closed"] == 1


def test_connection_table_is_bounded():
    numbers = [0]
    frames = []
    for i in range(50):
        t = Talk(client=("10.0.1.1", 30000 + i), numbers=numbers)
        t.t = T0 + i * MS
        frames.append(t.c(0, b"call"))
    sink, diag = RecordingSink(), Diagnostics("t")
    tracker = TcpTracker("cap", sink, diag, max_connections=8)
    for f in frames:
        tracker.feed(f)
        assert len(tracker._lru) <= 8 and len(tracker._conns) <= 16
    assert diag.counts["connections evicted (too many at once)"] == 42
    assert [c for c in sink.calls if c[0] == "close"][:2] == [("close", 1), ("close", 2)]


def test_new_syn_on_a_reused_tuple_starts_a_new_connection():
    t = Talk()
    first = t.handshake() + [t.c(0, b"old")]
    t.cisn = 90000
    second = t.handshake() + [t.c(0, b"new")]
    events, sink, _ = run(first + second)
    assert [e["conn"] for e in events if e["kind"] == "tcp.connect"] == [1, 2]
    assert sink.stream(1) == b"old" and sink.stream(2) == b"new"


# ---- real traffic recorded with tcpdump on loopback ----------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from correlate.wire.capture import open_capture  # noqa: E402
from correlate.wire.model import endpoint  # noqa: E402


def _capture_real_traffic(tmp_path, interface: str, host: str = "127.0.0.1"):
    """Record a served connection with data both ways and a refused one; return what was sent."""
    if os.geteuid() != 0:
        pytest.skip("recording with tcpdump needs root")
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    probe = socket.socket(family)
    probe.bind((host, 0))
    closed_port = probe.getsockname()[1]          # bound, never listening: SYN gets RST
    path = tmp_path / f"real-{interface}.pcap"
    dump = subprocess.Popen(
        # --immediate-mode and a big buffer: otherwise packets still in the kernel ring when
        # tcpdump is stopped are lost, and `-i any` drops bursts of 64 KiB loopback segments.
        ["tcpdump", "-i", interface, "-U", "--immediate-mode", "-B", "65536", "-s", "0", "-w", str(path),
         f"tcp and host {host} and (port {port} or port {closed_port})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or "listening" not in lines[-1]:   # "listening on lo, ..." once ready
            lines.append(dump.stderr.readline())
            if not lines[-1]:
                pytest.skip(f"tcpdump did not start: {' '.join(lines).strip()}")
        request = os.urandom(300_000)
        reply = b"reply:" + bytes(range(256)) * 40
        received = bytearray()

        def serve():
            conn, _ = listener.accept()
            with conn:
                while len(received) < len(request):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    received.extend(chunk)
                conn.sendall(reply)

        server = threading.Thread(target=serve)
        server.start()
        client = socket.create_connection((host, port))
        client_port = client.getsockname()[1]
        client.sendall(request)
        got = bytearray()
        while chunk := client.recv(65536):    # to the end: the server closes first
            got.extend(chunk)
        client.close()
        server.join(10)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, closed_port), timeout=5)
        assert bytes(received) == request and bytes(got) == reply
        time.sleep(0.5)                           # let the last packets reach the capture
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
        listener.close()
        probe.close()
    return path, port, closed_port, client_port, request, reply


def _decode(path):
    sink, diag = RecordingSink(), Diagnostics(str(path))
    tracker = TcpTracker(str(path), sink, diag)
    events, linktypes = [], set()
    for frame in open_capture(str(path), diag):
        linktypes.add(frame.linktype)
        events.extend(tracker.feed(frame))
    events.extend(tracker.finish())
    return events, sink, diag, linktypes


def _check_real(events, sink, diag, port, closed_port, client_port, request, reply, host="127.0.0.1"):
    tcp = [e for e in events if e["kind"].startswith("tcp.")]
    assert [e["kind"] for e in tcp] == ["tcp.connect", "tcp.close", "tcp.refused"], tcp
    connect, close, refused = tcp
    assert connect["src"] == endpoint(host, client_port) and connect["dst"] == endpoint(host, port)
    assert connect["handshake_ns"] >= 0 and connect["attempts"] == 1
    assert close["reason"] == "fin" and close["by"] == "server" and close["conn"] == connect["conn"]
    assert refused["reason"] == "rst" and refused["dst"] == endpoint(host, closed_port)
    assert sink.stream(connect["conn"], True) == request
    assert sink.stream(connect["conn"], False) == reply
    assert [c for c in sink.calls if c[0] == "gap"] == []
    assert diag.fatal is None


@pytest.mark.parametrize("interface, linktype", [("lo", 1), ("any", 276)])
def test_real_loopback_capture(tmp_path, interface, linktype):
    path, port, closed_port, client_port, request, reply = _capture_real_traffic(tmp_path, interface)
    events, sink, diag, linktypes = _decode(path)
    assert linktypes == {linktype}
    _check_real(events, sink, diag, port, closed_port, client_port, request, reply)
    if shutil.which("editcap"):
        # The same packets as pcapng and as nanosecond pcap decode to the same events.
        for fmt in ("pcapng", "nsecpcap"):
            other = tmp_path / f"real-{interface}.{fmt}"
            subprocess.run(["editcap", "-F", fmt, str(path), str(other)], check=True)
            again, sink2, diag2, _ = _decode(other)
            _check_real(again, sink2, diag2, port, closed_port, client_port, request, reply)
            assert [(e["kind"], e["time_ns"]) for e in again] == [(e["kind"], e["time_ns"]) for e in events]


def test_real_loopback_capture_ipv6(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    path, port, closed_port, client_port, request, reply = _capture_real_traffic(tmp_path, "lo", "::1")
    events, sink, diag, _ = _decode(path)
    _check_real(events, sink, diag, port, closed_port, client_port, request, reply, host="::1")


# ---- the lab's Gluster captures (tests/captures/README.md says what each one shows) --------

CAPTURES = os.path.join(os.path.dirname(__file__), "captures")


def _lab_capture(name):
    path = os.path.join(CAPTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not recorded")
    events, sink, diag, linktypes = _decode(path)
    assert diag.fatal is None and linktypes == {276}
    return [e for e in events if e["kind"].startswith("tcp.")], sink


def _is_brick(ep):
    return ep.startswith("127.0.0.2:") and int(ep.rsplit(":", 1)[1]) >= 49152


def test_lab_healthy_connections_open_and_close_cleanly():
    tcp, sink = _lab_capture("healthy.pcap")
    connects = {e["conn"] for e in tcp if e["kind"] == "tcp.connect"}
    closes = {e["conn"] for e in tcp if e["kind"] == "tcp.close"}
    assert connects and closes == connects
    assert any(_is_brick(e["dst"]) for e in tcp if e["kind"] == "tcp.connect")
    assert not [e for e in tcp if e["kind"] in ("tcp.refused", "tcp.timeout")]
    assert [c for c in sink.calls if c[0] == "gap"] == []


def test_lab_firewall_reject_is_an_icmp_refusal_of_the_brick_ports():
    tcp, _ = _lab_capture("firewall-reject.pcap")
    refused = [e for e in tcp if e["kind"] == "tcp.refused"]
    assert refused and all(e["reason"] == "icmp" and e["icmp_type"] == 3 and e["icmp_code"] == 3
                           and e["icmp_from"] == "127.0.0.2" and _is_brick(e["dst"]) for e in refused)
    assert not [e for e in tcp if e["kind"] == "tcp.timeout"]


def test_lab_firewall_drop_is_a_syn_timeout_on_the_brick_ports():
    tcp, _ = _lab_capture("firewall-drop.pcap")
    timeouts = [e for e in tcp if e["kind"] == "tcp.timeout"]
    assert timeouts and all(_is_brick(e["dst"]) and e["attempts"] >= 2
                            and e["waited_ns"] >= 3_000_000_000 for e in timeouts)
    assert not [e for e in tcp if e["kind"] == "tcp.refused"]
