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
