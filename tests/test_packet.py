"""Link/IP/TCP decoding of synthetic frames built with dpkt, one per supported link type."""
from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire.model import Frame
from correlate.wire.packet import ACK, RST, SYN, IcmpUnreachable, Segment, parse_frame


# ---- builders shared by the wire tests -------------------------------------------------

def _inet(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def tcp_ip(src: str, sport: int, dst: str, dport: int, flags: int = ACK, seq: int = 0,
           ack: int = 0, payload: bytes = b"") -> bytes:
    """An IPv4 or IPv6 packet holding one TCP segment."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=payload)
    if ":" in src:
        ip6 = dpkt.ip6.IP6(src=_inet(src), dst=_inet(dst), nxt=6, hlim=64, data=seg)
        ip6.plen = len(bytes(seg))
        return bytes(ip6)
    return bytes(dpkt.ip.IP(src=_inet(src), dst=_inet(dst), p=dpkt.ip.IP_PROTO_TCP, data=seg))


def icmp_unreachable(icmp_from: str, quoted: bytes, code: int = 3) -> bytes:
    """An ICMP(v6) destination unreachable from icmp_from quoting the start of `quoted`."""
    if ":" in icmp_from:
        inner_dst = socket.inet_ntop(socket.AF_INET6, quoted[8:24])
        msg = dpkt.icmp6.ICMP6(type=1, code=code, data=b"\0\0\0\0" + quoted[:48 + 8])
        ip6 = dpkt.ip6.IP6(src=_inet(icmp_from), dst=_inet(inner_dst), nxt=58, hlim=64, data=msg)
        ip6.plen = len(bytes(msg))
        return bytes(ip6)
    inner_src = socket.inet_ntoa(quoted[12:16])
    msg = dpkt.icmp.ICMP(type=3, code=code, data=dpkt.icmp.ICMP.Unreach(data=quoted[:28]))
    return bytes(dpkt.ip.IP(src=_inet(icmp_from), dst=_inet(inner_src), p=1, data=msg))


def ethernet(ip_packet: bytes, vlans: int = 0) -> bytes:
    etype = 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800
    tags = b"".join(struct.pack("!HH", 0x8100, 100 + i) for i in range(vlans))
    # dpkt's Ethernet re-derives the type from its payload, so the tagged frame is packed here
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", etype) + ip_packet


def sll(ip_packet: bytes) -> bytes:
    etype = 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800
    # packet type, ARPHRD_LOOPBACK, address length, 8 address bytes, protocol
    return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, etype) + ip_packet


def sll2(ip_packet: bytes) -> bytes:
    etype = 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800
    return bytes(dpkt.sll2.SLL2(ethtype=etype, intindex=1, hrd=772, type=0, hlen=6,
                                hdr=b"\0" * 8, data=ip_packet))


def null_loop(ip_packet: bytes, linktype: int) -> bytes:
    family = 2 if ip_packet[0] >> 4 == 4 else 30
    return struct.pack("<I" if linktype == 0 else "!I", family) + ip_packet


def link(ip_packet: bytes, linktype: int) -> bytes:
    if linktype == 1:
        return ethernet(ip_packet)
    if linktype == 113:
        return sll(ip_packet)
    if linktype == 276:
        return sll2(ip_packet)
    if linktype in (0, 108):
        return null_loop(ip_packet, linktype)
    return ip_packet


# ---- tests -------------------------------------------------------------------------------

LINKTYPES = [1, 113, 276, 101, 12, 14, 0, 108]


@pytest.mark.parametrize("linktype", LINKTYPES + [228])
def test_tcp_over_every_link_type_ipv4(linktype):
    diag = Diagnostics("t")
    pkt = tcp_ip("10.0.0.1", 40000, "10.0.0.2", 24007, flags=ACK, seq=7, ack=9, payload=b"abc")
    seg = parse_frame(Frame(5, linktype, link(pkt, linktype), 3), diag)
    assert isinstance(seg, Segment)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == ("10.0.0.1", 40000, "10.0.0.2", 24007)
    assert (seg.seq, seg.ack, seg.flags, seg.payload) == (7, 9, ACK, b"abc")
    assert (seg.time_ns, seg.number, seg.truncated) == (5, 3, 0)
    assert not diag.counts


@pytest.mark.parametrize("linktype", LINKTYPES + [229])
def test_tcp_over_every_link_type_ipv6(linktype):
    diag = Diagnostics("t")
    pkt = tcp_ip("fd00::1", 1023, "fd00::2", 49152, flags=SYN, seq=2**32 - 1, payload=b"")
    seg = parse_frame(Frame(1, linktype, link(pkt, linktype), 1), diag)
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.flags) == ("fd00::1", "fd00::2", 1023, 49152, SYN)
    assert seg.seq == 2**32 - 1 and seg.payload == b""


def test_vlan_tags_are_skipped():
    pkt = tcp_ip("10.0.0.1", 1, "10.0.0.2", 2, payload=b"x")
    seg = parse_frame(Frame(1, 1, ethernet(pkt, vlans=2), 1), Diagnostics("t"))
    assert seg.payload == b"x"


def test_ethernet_padding_is_not_payload():
    pkt = tcp_ip("10.0.0.1", 1, "10.0.0.2", 2, payload=b"")
    seg = parse_frame(Frame(1, 1, ethernet(pkt) + b"\0" * 6, 1), Diagnostics("t"))
    assert seg.payload == b"" and seg.truncated == 0


def test_snaplen_cut_is_reported_as_truncated():
    pkt = tcp_ip("10.0.0.1", 1, "10.0.0.2", 2, payload=b"0123456789")
    seg = parse_frame(Frame(1, 101, pkt[:-4], 1), Diagnostics("t"))
    assert seg.payload == b"012345" and seg.truncated == 4


def test_ipv6_extension_headers_are_skipped():
    seg_bytes = bytes(dpkt.tcp.TCP(sport=5, dport=6, flags=ACK, data=b"payload"))
    hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"          # hop-by-hop -> destination options
    dest = bytes([6, 1]) + b"\x01\x0c" + b"\0" * 12      # 16 bytes -> TCP
    body = hop + dest + seg_bytes
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), 0, 64, _inet("::1"), _inet("::2"))
    seg = parse_frame(Frame(1, 229, hdr + body, 1), Diagnostics("t"))
    assert isinstance(seg, Segment) and seg.payload == b"payload" and seg.dport == 6


def test_icmp_port_unreachable_names_the_original_connection():
    syn = tcp_ip("127.0.0.1", 41000, "127.0.0.2", 49152, flags=SYN, seq=1)
    msg = parse_frame(Frame(9, 101, icmp_unreachable("127.0.0.2", syn), 4), Diagnostics("t"))
    assert isinstance(msg, IcmpUnreachable)
    assert (msg.icmp_type, msg.icmp_code, msg.icmp_from) == (3, 3, "127.0.0.2")
    assert (msg.src, msg.sport, msg.dst, msg.dport, msg.proto) == ("127.0.0.1", 41000, "127.0.0.2", 49152, 6)


def test_icmpv6_unreachable():
    syn = tcp_ip("fd00::1", 41000, "fd00::2", 24007, flags=SYN, seq=1)
    msg = parse_frame(Frame(9, 1, ethernet(icmp_unreachable("fd00::2", syn, code=4)), 4), Diagnostics("t"))
    assert isinstance(msg, IcmpUnreachable)
    assert (msg.icmp_type, msg.icmp_code, msg.icmp_from) == (1, 4, "fd00::2")
    assert (msg.src, msg.sport, msg.dst, msg.dport) == ("fd00::1", 41000, "fd00::2", 24007)


def test_skips_are_counted_never_raised():
    diag = Diagnostics("t")
    udp = bytes(dpkt.ip.IP(src=_inet("1.1.1.1"), dst=_inet("2.2.2.2"), p=17,
                           data=dpkt.udp.UDP(sport=1, dport=2, data=b"u")))
    frag = bytearray(tcp_ip("1.1.1.1", 1, "2.2.2.2", 2, payload=b"abc"))
    frag[6] |= 0x20                                       # more fragments
    echo = bytes(dpkt.ip.IP(src=_inet("1.1.1.1"), dst=_inet("2.2.2.2"), p=1,
                            data=dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo())))
    frames = [
        Frame(1, 1, ethernet(udp), 1),
        Frame(1, 101, bytes(frag), 2),
        Frame(1, 101, echo, 3),
        Frame(1, 147, b"whatever", 4),
        Frame(1, 147, b"whatever", 5),
        Frame(1, 1, b"\x02" * 12 + b"\x08\x06" + b"\0" * 28, 6),   # ARP
        Frame(1, 1, b"\x02" * 5, 7),
        Frame(1, 101, b"\x45", 8),
        Frame(1, 101, b"\x75" + b"\0" * 40, 9),
    ]
    assert [parse_frame(f, diag) for f in frames] == [None] * len(frames)
    assert diag.counts["frames of unknown link type 147"] == 2
    assert diag.first_where["frames of unknown link type 147"] == "packet 4"
    assert diag.counts["non-TCP packets"] == 1
    assert diag.counts["IPv4 fragments"] == 1
    assert diag.counts["non-IP frames"] == 2     # ARP, and an IP version of 7
    assert diag.counts["frames too short for their headers"] == 2
    assert sum(diag.counts.values()) == len(frames)
