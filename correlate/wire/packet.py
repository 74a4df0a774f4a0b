"""Link, IP and TCP/ICMP header decoding of one Frame, with struct on the raw bytes.

Only what the TCP tracker needs is decoded (no dpkt objects per packet: this runs for
every frame of a capture). Anything not TCP or an ICMP destination-unreachable is a counted
skip in Diagnostics, never an exception.
"""
from __future__ import annotations

import socket
import struct

from ..diagnostics import Diagnostics
from .capture import Frame

# TCP flags
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_RAW_IP = (101, 12, 14)
_NULL_LOOP = (0, 108)
_IPV6_EXT = (0, 43, 60, 51)          # hop-by-hop, routing, destination options, AH
_IPV6_FRAG = 44

_ipv6_hdr = struct.Struct("!IHBB16s16s").unpack_from
_ports = struct.Struct("!HH").unpack_from


class Segment:
    """One TCP segment. `truncated` counts payload bytes the capture cut off (snaplen)."""
    __slots__ = ("time_ns", "number", "src", "sport", "dst", "dport", "flags", "seq", "ack",
                 "payload", "truncated")

    def __init__(self, time_ns: int, number: int, src: str, sport: int, dst: str, dport: int,
                 flags: int, seq: int, ack: int, payload: bytes, truncated: int = 0):
        self.time_ns = time_ns
        self.number = number
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.flags = flags
        self.seq = seq
        self.ack = ack
        self.payload = payload
        self.truncated = truncated

    def __repr__(self) -> str:
        return (f"Segment(#{self.number} {self.src}:{self.sport} > {self.dst}:{self.dport} "
                f"flags={self.flags:#x} seq={self.seq} ack={self.ack} len={len(self.payload)})")


class IcmpUnreachable:
    """An ICMP/ICMPv6 destination unreachable, with the addresses of the packet it answers."""
    __slots__ = ("time_ns", "number", "icmp_from", "icmp_type", "icmp_code",
                 "src", "sport", "dst", "dport", "proto")

    def __init__(self, time_ns: int, number: int, icmp_from: str, icmp_type: int, icmp_code: int,
                 src: str, sport: int, dst: str, dport: int, proto: int):
        self.time_ns = time_ns
        self.number = number
        self.icmp_from = icmp_from
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.src = src          # the original packet's source (the client that sent the SYN)
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.proto = proto

    def __repr__(self) -> str:
        return (f"IcmpUnreachable(#{self.number} from {self.icmp_from} type={self.icmp_type} "
                f"code={self.icmp_code} for {self.src}:{self.sport} > {self.dst}:{self.dport})")


# Address text is cached: a capture has few distinct addresses and inet_ntop shows in profiles.
_addr_cache: dict[bytes, str] = {}


def _addr(raw: bytes) -> str:
    text = _addr_cache.get(raw)
    if text is None:
        if len(_addr_cache) >= 65536:
            _addr_cache.clear()
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        _addr_cache[raw] = text
    return text


_addr4_cache: dict[int, str] = {}


def _word(data: bytes, at: int) -> int:
    """The big-endian 32-bit word at `at` (an IPv4 address: no slice, no bytes object)."""
    b0, b1, b2, b3 = data[at], data[at + 1], data[at + 2], data[at + 3]
    return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3


def _addr4(packed: int) -> str:
    text = _addr4_cache.get(packed)
    if text is None:
        if len(_addr4_cache) >= 65536:
            _addr4_cache.clear()
        text = f"{packed >> 24}.{(packed >> 16) & 255}.{(packed >> 8) & 255}.{packed & 255}"
        _addr4_cache[packed] = text
    return text


def parse_frame(frame: Frame, diag: Diagnostics) -> Segment | IcmpUnreachable | None:
    """Decode a frame down to TCP (or ICMP unreachable); None, counted in diag, otherwise."""
    data = frame.data
    if type(data) is not bytes:
        data = bytes(data)
    linktype = frame.linktype
    try:
        if linktype == 1:                                   # Ethernet, maybe VLAN-tagged
            off = 14
            etype = (data[12] << 8) | data[13]
            while etype in _ETH_VLAN:
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        elif linktype == 276:                               # Linux cooked v2 (-i any)
            off = 20
            etype = (data[0] << 8) | data[1]
        elif linktype == 113:                               # Linux cooked v1
            off = 16
            etype = (data[14] << 8) | data[15]
        elif linktype in _RAW_IP or linktype in _NULL_LOOP:
            # The null/loop family field's byte order and AF_INET6 value differ by OS:
            # the IP version nibble says the same, reliably.
            off = 4 if linktype in _NULL_LOOP else 0
            version = data[off] >> 4
            etype = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else version
        elif linktype == 228:
            off, etype = 0, _ETH_IPV4
        elif linktype == 229:
            off, etype = 0, _ETH_IPV6
        else:
            diag.skip(f"frames of unknown link type {linktype}", f"packet {frame.number}")
            return None
        if etype == _ETH_IPV4:
            return _ipv4(frame, data, off, diag)
        if etype == _ETH_IPV6:
            return _ipv6(frame, data, off, diag)
        diag.skip("non-IP frames", f"packet {frame.number}")
        return None
    except (IndexError, struct.error):
        diag.skip("frames too short for their headers", f"packet {frame.number}")
        return None


def _ipv4(frame: Frame, data: bytes, off: int, diag: Diagnostics):
    # byte by byte, not with a Struct: typed in packet.pxd, these are C reads
    if len(data) < off + 20:
        raise IndexError("IPv4 header cut short")
    vihl = data[off]
    if vihl >> 4 != 4:
        diag.skip("IP packets with a bad version", f"packet {frame.number}")
        return None
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        diag.skip("IPv4 packets with a bad header length", f"packet {frame.number}")
        return None
    frag = (data[off + 6] << 8) | data[off + 7]
    if frag & 0x3FFF:                     # more-fragments flag or a fragment offset
        diag.skip("IPv4 fragments", f"packet {frame.number}")
        return None
    # total length trims Ethernet padding; 0 is what segmentation offload leaves behind
    total = (data[off + 2] << 8) | data[off + 3]
    end = off + total if total else len(data)
    start = off + ihl
    proto = data[off + 9]
    if proto == 6:
        return _tcp(frame, data, start, end, _addr4(_word(data, off + 12)),
                    _addr4(_word(data, off + 16)), diag)
    if proto == 1:
        return _icmp4(frame, data, start, _addr4(_word(data, off + 12)), diag)
    diag.skip("non-TCP packets", f"packet {frame.number}")
    return None


def _ipv6_payload(data: bytes, off: int) -> tuple[int, int, int, bytes, bytes, bool]:
    """(next header, payload start, payload end, src, dst, is a fragment) of an IPv6 packet."""
    vtc, plen, nxt, _hlim, src, dst = _ipv6_hdr(data, off)
    if vtc >> 28 != 6:
        raise ValueError("not IPv6")
    pos = off + 40
    end = pos + plen if plen else len(data)       # 0: jumbogram or offload
    fragment = False
    for _ in range(16):                  # bounded walk over extension headers
        if nxt in _IPV6_EXT:
            length = (data[pos + 1] + 2) * 4 if nxt == 51 else (data[pos + 1] + 1) * 8
            nxt = data[pos]
            pos += length
        elif nxt == _IPV6_FRAG:
            offset_flags = (data[pos + 2] << 8) | data[pos + 3]
            fragment = fragment or bool(offset_flags & 0xFFF9)    # offset or more-fragments
            nxt = data[pos]
            pos += 8
        else:
            break
    return nxt, pos, end, src, dst, fragment


def _ipv6(frame: Frame, data: bytes, off: int, diag: Diagnostics):
    try:
        nxt, start, end, src, dst, fragment = _ipv6_payload(data, off)
    except ValueError:
        diag.skip("IP packets with a bad version", f"packet {frame.number}")
        return None
    if fragment:
        diag.skip("IPv6 fragments", f"packet {frame.number}")
        return None
    if nxt == 6:
        return _tcp(frame, data, start, end, _addr(src), _addr(dst), diag)
    if nxt == 58:
        return _icmp6(frame, data, start, _addr(src), diag)
    diag.skip("non-TCP packets", f"packet {frame.number}")
    return None


def _tcp(frame: Frame, data: bytes, start: int, end: int, src: str, dst: str,
         diag: Diagnostics) -> Segment | None:
    if len(data) < start + 14:
        raise IndexError("TCP header cut short")
    b0, b1, b2, b3 = data[start + 4], data[start + 5], data[start + 6], data[start + 7]
    seq = (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    b0, b1, b2, b3 = data[start + 8], data[start + 9], data[start + 10], data[start + 11]
    ack = (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    hlen = (data[start + 12] >> 4) * 4
    if hlen < 20:
        diag.skip("TCP segments with a bad header length", f"packet {frame.number}")
        return None
    pstart = start + hlen
    if end < pstart:
        diag.skip("TCP segments longer than their IP packet", f"packet {frame.number}")
        return None
    payload = data[pstart:end]
    truncated = end - pstart - len(payload)      # cut off by the capture's snaplen
    return Segment(frame.time_ns, frame.number, src, (data[start] << 8) | data[start + 1], dst,
                   (data[start + 2] << 8) | data[start + 3], data[start + 13], seq, ack,
                   payload, truncated)


def _embedded_ports(data: bytes, pos: int) -> tuple[int, int]:
    """Ports of the original packet quoted in an ICMP error (only its first 8 bytes are sure)."""
    if pos + 4 > len(data):
        return 0, 0
    return _ports(data, pos)


def _icmp4(frame: Frame, data: bytes, start: int, icmp_from: str, diag: Diagnostics):
    icmp_type, icmp_code = data[start], data[start + 1]
    if icmp_type != 3:
        diag.skip("ICMP messages other than destination unreachable", f"packet {frame.number}")
        return None
    inner = start + 8
    vihl, proto = data[inner], data[inner + 9]
    src, dst = data[inner + 12:inner + 16], data[inner + 16:inner + 20]
    if vihl >> 4 != 4 or len(dst) < 4:
        diag.skip("ICMP errors with a damaged quoted packet", f"packet {frame.number}")
        return None
    sport, dport = _embedded_ports(data, inner + (vihl & 0x0F) * 4)
    return IcmpUnreachable(frame.time_ns, frame.number, icmp_from, icmp_type, icmp_code,
                           _addr(src), sport, _addr(dst), dport, proto)


def _icmp6(frame: Frame, data: bytes, start: int, icmp_from: str, diag: Diagnostics):
    icmp_type, icmp_code = data[start], data[start + 1]
    if icmp_type != 1:
        diag.skip("ICMPv6 messages other than destination unreachable", f"packet {frame.number}")
        return None
    try:
        proto, pos, _end, src, dst, _frag = _ipv6_payload(data, start + 8)
    except (ValueError, IndexError, struct.error):
        diag.skip("ICMP errors with a damaged quoted packet", f"packet {frame.number}")
        return None
    sport, dport = _embedded_ports(data, pos)
    return IcmpUnreachable(frame.time_ns, frame.number, icmp_from, icmp_type, icmp_code,
                           _addr(src), sport, _addr(dst), dport, proto)
