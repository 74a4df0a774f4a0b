"""TLS session secrets from a key log file, in the NSS format every TLS tool shares
(SSLKEYLOGFILE, Wireshark's tls.keylog_file, `correlate run --probe tls-keys`).

Each line is `LABEL <client_random hex> <secret hex>`; the labels read here are TLS 1.2's
CLIENT_RANDOM (the master secret) and TLS 1.3's CLIENT_TRAFFIC_SECRET_0 and
SERVER_TRAFFIC_SECRET_0 (and the handshake secrets, where a log has them). A file that
grows while it is read (a probe writing the keys of connections as they are set up) is read
again from where it stopped, at most every REFRESH_S. Bounded: lines longer than MAX_LINE
and entries beyond MAX_ENTRIES are counted and skipped, never kept.
"""
from __future__ import annotations

import os
import time

LABELS = frozenset({"CLIENT_RANDOM", "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0",
                    "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET"})
MAX_LINE = 512
MAX_ENTRIES = 1 << 17        # client randoms kept (each a few hundred bytes)
MAX_SECRET = 64              # the largest hash a TLS suite uses (SHA-512)
REFRESH_S = 0.05


class KeyLogError(Exception):
    pass


class KeyLog:
    """client_random -> {label: secret}, read from `path`; `follow`: a log still being
    written (a live run), read again as it grows, and its connections' records held until
    their keys come (tls_decrypt.Decryption)."""

    def __init__(self, path: str, follow: bool = False):
        self.path = path
        self.follow = follow
        self.waiting_bytes = 0          # records held for keys, all connections
        self.secrets: dict[bytes, dict[str, bytes]] = {}
        self.bad_lines = 0
        self._offset = 0
        self._partial = b""
        self._checked = 0.0
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise KeyLogError(f"TLS key log {path}: {exc.strerror or exc}") from None
        from .tls_decrypt import DecryptError, load_ciphers
        try:
            load_ciphers()
        except DecryptError as exc:
            raise KeyLogError(str(exc)) from None
        self.refresh(force=True)

    def lookup(self, client_random: bytes, wait: bool = True) -> dict[str, bytes] | None:
        """The secrets logged for a connection; the file is read again (throttled) when
        `wait` says the connection may still get them."""
        found = self.secrets.get(client_random)
        if found is None and wait and self.refresh():
            found = self.secrets.get(client_random)
        return found

    def refresh(self, force: bool = False) -> bool:
        """Read what was appended since the last time; True if anything new was read."""
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_S:
            return False
        self._checked = now
        try:
            if os.stat(self.path).st_size <= self._offset:
                return False
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(8 << 20)
        except OSError:
            return False
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""
            self.bad_lines += 1
        for line in lines:
            self._line(line)
        return bool(lines)

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line or line.startswith(b"#"):
            return
        parts = line.split()
        if len(line) > MAX_LINE or len(parts) != 3:
            self.bad_lines += 1
            return
        try:
            label = parts[0].decode("ascii")
            client_random, secret = bytes.fromhex(parts[1].decode()), bytes.fromhex(parts[2].decode())
        except (UnicodeDecodeError, ValueError):
            self.bad_lines += 1
            return
        if label not in LABELS:           # EXPORTER_SECRET and the like: not needed
            return
        if len(client_random) != 32 or not 0 < len(secret) <= MAX_SECRET:
            self.bad_lines += 1
            return
        entry = self.secrets.get(client_random)
        if entry is None:
            if len(self.secrets) >= MAX_ENTRIES:
                self.bad_lines += 1
                return
            entry = self.secrets[client_random] = {}
        entry[label] = secret


def keylog_line(label: str, client_random: bytes, secret: bytes) -> str:
    return f"{label} {client_random.hex()} {secret.hex()}\n"
