"""Shared shapes of the wire pipeline: captured frames, connections, and the stream sink.

capture.py yields Frame; tcp.py tracks connections and hands in-order bytes to a
StreamSink; rpc.py is the sink that turns bytes into rpc.call / rpc.reply events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Frame, one per packet, is defined beside the reader that makes it so that it is compiled
# with it (a dataclass's __init__ would run interpreted for every packet).
from .capture import Frame  # noqa: F401


def endpoint(ip: str, port: int) -> str:
    """`ip:port`, with IPv6 addresses in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(slots=True, eq=False)
class Conn:
    """A TCP connection. `client` sent the SYN (or, mid-stream, the side that sends RPC calls
    is not known yet: the lower port is taken as the server until RPC says otherwise)."""
    client: str         # "ip:port"
    server: str         # "ip:port"
    number: int         # 1-based order of first appearance in the input


class StreamSink(Protocol):
    """Consumer of reassembled TCP payload. Each method returns the events it produced."""

    def on_data(self, conn: Conn, from_client: bool, time_ns: int, data: bytes) -> list[dict]: ...

    def on_gap(self, conn: Conn, from_client: bool, time_ns: int, missing: int) -> list[dict]: ...

    def on_close(self, conn: Conn, time_ns: int) -> list[dict]: ...
