"""`--probe tls-keys`: the session keys of Gluster's TLS connections, written to a key log.

probes/tls_keys.c traps only when a handshake call returns (SSL_connect, SSL_accept,
SSL_do_handshake), never per read or write, and reads the client random and the secrets
from the SSL object at the offsets tls_layout.py measured on the same library. Each
connection's keys become lines of an NSS key log (the format Wireshark and every TLS tool
read): TLS 1.3's CLIENT_TRAFFIC_SECRET_0 and SERVER_TRAFFIC_SECRET_0, TLS 1.2's
CLIENT_RANDOM. A capture of the same traffic is then decrypted with it (wire/tls_decrypt.py),
live (`run --probe tls-keys --pcap -`) or later (`analyze --tls-keylog`). The file holds
secrets: it is created mode 0600, and a client random seen twice (client and brick on one
host) is written once.
"""
from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from dataclasses import asdict

from ..wire.tls_keys import keylog_line
from .bcc_backend import check_bcc_prerequisites, detach_uprobes
from .errors import ProbeError
from .resolve import find_library
from .tls_collector import HANDSHAKE, LIBSSL, THREAD_PREFIX, exported_symbols, filter_cflags
from .tls_layout import SECRET_LEN, measure

MAX_REMEMBERED = 65536        # client randoms already written (both ends of a connection)
PAGES = 64


class KeyEvent(ctypes.Structure):
    """Mirror of struct key_event_t in probes/tls_keys.c."""
    _fields_ = [("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32), ("ssl", ctypes.c_uint64),
                ("client_random", ctypes.c_uint8 * 32),
                ("client_secret", ctypes.c_uint8 * SECRET_LEN),
                ("server_secret", ctypes.c_uint8 * SECRET_LEN),
                ("master_key", ctypes.c_uint8 * SECRET_LEN), ("comm", ctypes.c_char * 16)]


def keylog_lines(client_random: bytes, client_secret: bytes, server_secret: bytes,
                 master_key: bytes) -> list[str]:
    """The key log lines one handshake's record gives: TLS 1.3 when the traffic secrets were
    set (a SHA-256 suite fills 32 of the 48 bytes, the rest stays zero), else TLS 1.2."""
    if any(client_secret) and any(server_secret):
        size = SECRET_LEN if any(client_secret[32:]) or any(server_secret[32:]) else 32
        return [keylog_line("CLIENT_TRAFFIC_SECRET_0", client_random, client_secret[:size]),
                keylog_line("SERVER_TRAFFIC_SECRET_0", client_random, server_secret[:size])]
    if any(master_key):
        return [keylog_line("CLIENT_RANDOM", client_random, master_key)]
    return []


def program_path() -> str:
    from importlib.resources import files
    return str(files("correlate.probes").joinpath("tls_keys.c"))


class TlsKeyCollector:
    """Attach, poll, stop, as the other collectors; it gives no events: its output is the
    key log at `keylog_path`, which the capture's decoder reads as it grows."""

    name = "tls-keys"

    def __init__(self, keylog_path: str, pid: int | None = None, library: str = LIBSSL,
                 thread_prefix: str | None = THREAD_PREFIX):
        self.keylog_path = keylog_path
        self.pid = pid
        self.library = library
        self.thread_prefix = thread_prefix
        self.bpf = None
        self.path: str | None = None
        self.layout = None
        self.handshakes = self.logged = self.lost = 0
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._out = None

    def start(self) -> "TlsKeyCollector":
        check_bcc_prerequisites()
        from bcc import BPF
        self.path = find_library(self.library, self.pid)
        self.layout = measure(self.path)
        cflags = [f"-DOFF_{name.upper()}={offset}" for name, offset in asdict(self.layout).items()]
        cflags += filter_cflags(self.thread_prefix, self.pid)
        with open(program_path()) as f:
            text = f.read()
        try:
            self.bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:
            raise ProbeError(f"the tls-keys probe program did not load: {exc}") from None
        symbols = exported_symbols(self.path)
        attached = [f for f in HANDSHAKE if f in symbols]
        if not attached:
            raise ProbeError(f"{self.path} has none of {', '.join(HANDSHAKE)}")
        for function in attached:
            self.bpf.attach_uprobe(name=self.path.encode(), addr=symbols[function],
                                   fn_name=b"handshake_enter", pid=-1)
            self.bpf.attach_uretprobe(name=self.path.encode(), addr=symbols[function],
                                      fn_name=b"handshake_return", pid=-1)
        fd = os.open(self.keylog_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._out = os.fdopen(fd, "a", buffering=1)
        self.bpf[b"keys"].open_perf_buffer(self._record, page_cnt=PAGES, lost_cb=self._lost)
        self.attached = 2 * len(attached)
        return self

    def _lost(self, count: int) -> None:
        self.lost += count

    def _record(self, _cpu, data, size) -> None:
        if size < ctypes.sizeof(KeyEvent):
            return
        rec = ctypes.cast(data, ctypes.POINTER(KeyEvent)).contents
        self.handshakes += 1
        client_random = bytes(rec.client_random)
        if client_random in self._seen or not any(client_random):
            return
        self._seen[client_random] = None
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        lines = keylog_lines(client_random, bytes(rec.client_secret), bytes(rec.server_secret),
                             bytes(rec.master_key))
        if lines:
            self._out.write("".join(lines))
            self.logged += 1

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        self.bpf.perf_buffer_poll(timeout_ms)
        return []

    def stop(self) -> list[dict]:
        if self.bpf is not None:
            try:
                self.bpf.perf_buffer_consume()
            except Exception:
                pass
            detach_uprobes(self.bpf)
            self.bpf.cleanup()
            self.bpf = None
        if self._out is not None:
            self._out.close()
            self._out = None
        return []

    def summary(self) -> dict:
        return {"backend": "bcc", "library": self.path, "handshakes": self.handshakes,
                "connections_logged": self.logged, "keylog": self.keylog_path,
                "layout": asdict(self.layout) if self.layout else None}
