"""A process's socket fd -> its TCP 4-tuple, through /proc (fd link -> inode -> net/tcp row).

Which end is the server: the one whose port the host listens on (a LISTEN row of the same
network namespace with that local port); the other end otherwise."""
from __future__ import annotations

import ipaddress
import os
import re

_SOCKET = re.compile(r"socket:\[(\d+)\]")
LISTEN = "0A"


def socket_inode(pid: int, fd: int) -> int | None:
    try:
        m = _SOCKET.fullmatch(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _addr(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # /proc prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _rows(pid: int):
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 10:
                        yield parts
        except OSError:
            continue


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def tcp_tuple(pid: int, fd: int) -> tuple[str, str, bool] | None:
    """(client, server, is this process the client end?) for socket `fd` of `pid`, the ends
    as "ip:port"; None when it is gone or not TCP."""
    inode = socket_inode(pid, fd)
    if inode is None:
        return None
    mine = None
    listening: set[int] = set()
    for parts in _rows(pid):
        if parts[3] == LISTEN:
            listening.add(int(parts[1].rsplit(":", 1)[1], 16))
        elif parts[9] == str(inode):
            mine = parts
    if mine is None:
        return None
    local, remote = _addr(mine[1]), _addr(mine[2])
    if local[1] in listening:
        return _endpoint(*remote), _endpoint(*local), False
    return _endpoint(*local), _endpoint(*remote), True
