"""The tls probe's user-space half without the kernel: /proc socket rows, and the plaintext
records of both ends of a connection turned into one RPC stream."""
from __future__ import annotations

from correlate.probe import proc_sockets
from correlate.probe.tls_collector import TlsCollector

CALL = bytes.fromhex("80000028" "00000007" "00000000" "00000002" "075bcd6d" "00000001"
                     "00000002" "00000000" "00000000" "00000000" "00000000")
REPLY = bytes.fromhex("80000018" "00000007" "00000001" "00000000" "00000000" "00000000"
                      "00000000")


def test_proc_net_tcp_addresses():
    assert proc_sockets._addr("0100007F:BB80") == ("127.0.0.1", 48000)
    # IPv6 ::ffff:127.0.0.2, each 32-bit word printed in host order
    assert proc_sockets._addr("0000000000000000FFFF00000200007F:C000") == ("127.0.0.2", 49152)
    assert proc_sockets._addr("000080FE00000000FF005450B6AD1DFE:0016") == ("fe80::5054:ff:fe1d:adb6", 22)


def _collector() -> TlsCollector:
    c = TlsCollector()
    c.clock = None
    return c


def test_both_ends_probed_give_one_stream_from_the_first_end_seen():
    c = _collector()
    ends = ("127.0.0.1:40000", "127.0.0.2:49152")
    c._streams[(10, 0xA)] = (*ends, True)        # the client process's SSL*
    c._streams[(20, 0xB)] = (*ends, False)       # the brick's SSL* of the same connection
    c._held = [(100, 10, True, 0xA, CALL, len(CALL)), (101, 20, False, 0xB, CALL, len(CALL)),
               (200, 20, True, 0xB, REPLY, len(REPLY)), (201, 10, False, 0xA, REPLY, len(REPLY))]
    events = c._release(None)
    assert [(e["kind"], e["src"], e["dst"]) for e in events] == [
        ("rpc.call", ends[0], ends[1]), ("rpc.reply", ends[1], ends[0])]
    assert events[1]["latency_ns"] == 101 and all(e["source"] == "tls" for e in events)


def test_truncated_copy_is_a_gap_and_unknown_sockets_are_counted():
    c = _collector()
    ends = ("127.0.0.1:40000", "127.0.0.2:49152")
    c._streams[(10, 0xA)] = (*ends, True)
    c._streams[(11, 0xC)] = None                 # socket gone before /proc was read
    c._held = [(100, 10, True, 0xA, CALL[:20], len(CALL)), (150, 11, True, 0xC, CALL, 44)]
    assert c._release(None) == []
    assert c.truncated_bytes == len(CALL) - 20 and c.unattributed_bytes == 44


def test_pieces_of_one_direction_are_decoded_as_one_run():
    """A reply read in pieces (record mark, header, rest) is one run with the last piece's
    time; a call written in pieces takes its first piece's time; nothing is lost between."""
    c = _collector()
    ends = ("127.0.0.1:40000", "127.0.0.2:49152")
    c._streams[(10, 0xA)] = (*ends, True)
    c._held = [(100, 10, True, 0xA, CALL[:4], 4), (105, 10, True, 0xA, CALL[4:], len(CALL) - 4),
               (200, 10, False, 0xA, REPLY[:4], 4), (210, 10, False, 0xA, REPLY[4:12], 8),
               (230, 10, False, 0xA, REPLY[12:], len(REPLY) - 12)]
    events = c._release(None)
    assert [(e["kind"], e["time_ns"]) for e in events] == [("rpc.call", 100), ("rpc.reply", 230)]


def test_a_truncated_piece_ends_its_run():
    from correlate.probe.tls_collector import _runs
    ready = [(1, 10, True, 0xA, b"ab", 5), (2, 10, True, 0xA, b"cd", 2), (3, 10, True, 0xA, b"e", 1)]
    assert list(_runs(ready)) == [(1, 10, True, 0xA, b"ab", 5), (2, 10, True, 0xA, b"cde", 3)]


def test_a_ring_record_is_read_as_the_bpf_program_writes_it():
    from correlate.probe.tls_collector import _HEADER, KIND_DATA
    c = _collector()
    c.clock = type("Clock", (), {"to_realtime": staticmethod(lambda ts: ts + 1000)})()
    c._streams[(10, 0xA)] = ("127.0.0.1:40000", "127.0.0.2:49152", True)
    head = _HEADER.pack(5, 0xA, 10, 11, 7, KIND_DATA, 1, len(CALL), 20, 0, b"glfs_epoll000")
    c._on_record(memoryview(head + CALL[:20]))
    assert c._held == [(1005, 10, True, 0xA, CALL[:20], len(CALL))] and c._fds[(10, 0xA)] == 7


def test_records_the_ring_refused_are_a_gap_the_framer_resynchronises_after():
    """The BPF program tells, in a stream's next record, how many bytes the full ring
    refused: the first call is lost with them, the next one decodes (not spliced garbage)."""
    from correlate.probe.tls_collector import _HEADER, KIND_DATA
    c = _collector()
    c.clock = type("Clock", (), {"to_realtime": staticmethod(lambda ts: ts)})()
    ends = ("127.0.0.1:40000", "127.0.0.2:49152")
    c._streams[(10, 0xA)] = (*ends, True)
    first = _HEADER.pack(100, 0xA, 10, 11, 7, KIND_DATA, 1, 4, 4, 0, b"glfs")
    second = _HEADER.pack(300, 0xA, 10, 11, 7, KIND_DATA, 1, len(CALL), len(CALL),
                          len(CALL) - 4, b"glfs")
    c._on_record(memoryview(first + CALL[:4]))       # the rest of this call was refused
    c._on_record(memoryview(second + CALL))
    events = c._release(None)
    assert [(e["kind"], e["time_ns"]) for e in events] == [("rpc.call", 300)]
    assert c.lost_bytes == len(CALL) - 4 and c.truncated_bytes == 0


def test_a_failed_handshake_record_is_a_typed_tls_error():
    """The BPF program's KIND_HANDSHAKE record (struct hs_t after the header) becomes a
    tls.error with OpenSSL's texts; a hostile function name read from the process is made
    printable; the event holds to the schema."""
    from correlate.diagnostics import Diagnostics
    from correlate.probe.tls_collector import _HEADER, _HS, KIND_HANDSHAKE
    from correlate.validate import clean_events
    c = _collector()
    c.clock = type("Clock", (), {"to_realtime": staticmethod(lambda ts: ts)})()
    c.path = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    hs = _HS.pack(20, 134, 20, -1, 2, (24007).to_bytes(2, "big"), bytes([127, 0, 0, 2]) + bytes(12),
                  b"tls_post_process_server_certificate\x1b[31m\0", 0, bytes(2), bytes(16))
    head = _HEADER.pack(7, 0xA, 10, 11, -1, KIND_HANDSHAKE, 0, 0, _HS.size, 0, b"glfs_epoll000")
    c._on_record(memoryview(head + hs))
    (ev,) = c._release(None)
    assert ev["kind"] == "tls.error" and ev["function"] == "SSL_connect"
    assert ev["dst"] == "127.0.0.2:24007" and ev["reason"] == "certificate verify failed"
    assert ev["verify_error"] == "unable to get local issuer certificate"
    assert ev["ssl_function"] == "tls_post_process_server_certificate?[31m"
    diag = Diagnostics("probes")
    assert clean_events([ev], diag) == [ev] and not diag.counts


def test_a_failed_accept_names_its_client_from_the_socket():
    """A server's SSL_accept: both ends read from the socket in the kernel at the failure
    (the client is src, as on the wire), IPv4 and IPv6."""
    from correlate.probe.tls_collector import _HEADER, _HS, KIND_HANDSHAKE
    for family, peer, local, want in (
            (2, bytes([127, 0, 0, 1]) + bytes(12), bytes([127, 0, 0, 2]) + bytes(12),
             ("127.0.0.1:49150", "127.0.0.2:49152")),
            (10, bytes(15) + b"\1", bytes(15) + b"\1", ("[::1]:49150", "[::1]:49152"))):
        c = _collector()
        c.clock = type("Clock", (), {"to_realtime": staticmethod(lambda ts: ts)})()
        c.path = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
        hs = _HS.pack(20, 134, 10, -1, family, (49150).to_bytes(2, "big"), peer, b"x\0",
                      family, (49152).to_bytes(2, "big"), local)
        head = _HEADER.pack(7, 0xA, 10, 11, 9, KIND_HANDSHAKE, 1, 0, _HS.size, 0, b"glfs_epoll001")
        c._on_record(memoryview(head + hs))
        (ev,) = c._release(None)
        assert ev["function"] == "SSL_accept" and (ev["src"], ev["dst"]) == want


def test_the_polling_threads_scheduling_is_given_back_at_stop():
    """SCHED_BATCH while it decodes; the thread's own policy again once the collector stops
    (in a test run or an embedding program, that thread goes on with other work)."""
    import os
    import threading

    from correlate.probe.tls_collector import _restore_policy, _yield_to_probed
    tid = threading.get_native_id()
    policy = os.sched_getscheduler(tid)
    before = _yield_to_probed()
    assert before is not None and os.sched_getscheduler(tid) == os.SCHED_BATCH
    _restore_policy(before)
    assert os.sched_getscheduler(tid) == policy
