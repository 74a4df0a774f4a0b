"""TLS on a Gluster port: what a capture shows of an encrypted connection (RFC 8446, RFC 5246).

A Gluster connection with `client.ssl`/`server.ssl` carries TLS records instead of RPC record
marks. The first bytes tell them apart: a TLS record starts with a content type 20-24 and
version 3.x, which read as an RPC record mark would be a non-last fragment longer than
MAX_RECORD, so no RPC stream starts that way. Such a direction is handed to TlsConn, which
reads only what crosses in clear: the hellos (version, cipher, SNI), the certificates of a
TLS 1.2 handshake (TLS 1.3 encrypts them), alerts sent before encryption starts, and counts
the encrypted records. Record bodies of encrypted records are skipped without buffering; a
clear record is at most MAX_TLS_RECORD bytes, the handshake kept at most MAX_HANDSHAKE.
Given a key log (tls_keys.KeyLog), encrypted records are read whole and decrypted
(tls_decrypt.Decryption); their application data goes to `on_plain`, the same RPC framing a
plaintext connection has, and an alert inside them is named.
"""
from __future__ import annotations

from .der import certificate_summary
from .model import Conn
from .tls_decrypt import Decryption

MAX_TLS_RECORD = (1 << 14) + 2048       # RFC 5246 6.2.3: the largest ciphertext allowed
MAX_HANDSHAKE = 128 << 10               # clear handshake bytes kept per direction
MAX_CERTS = 4                           # certificates described per Certificate message
MAX_ALERTS = 8                          # alerts remembered per connection
ALERT_TLS13_LEN = 19                    # an encrypted alert: 2 bytes + type + 16-byte AEAD tag
# Under TLS 1.3 a client's second flight, answering a CertificateRequest (Gluster always asks
# for one), is Certificate, CertificateVerify, Finished: three records before any data.
TLS13_CLIENT_FLIGHT = 3
CCS, ALERT, HANDSHAKE, APPDATA = 20, 21, 22, 23
NOTE = ("encrypted Gluster connection: use `--probe tls` to see inside, or `--tls-keylog` "
        "with the keys `--probe tls-keys` logs")
DECRYPTED = "encrypted Gluster connection, decrypted with the key log"
HIDDEN_CERTS = "TLS 1.3 encrypts the certificates: subject and validity are not in the capture"

VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
            0x0304: "TLS 1.3"}
CIPHERS = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
           0x1303: "TLS_CHACHA20_POLY1305_SHA256",
           0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
           0xC02F: "ECDHE-RSA-AES128-GCM-SHA256", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
           0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305", 0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
           0x009E: "DHE-RSA-AES128-GCM-SHA256", 0x009F: "DHE-RSA-AES256-GCM-SHA384"}
ALERTS = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
          22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
          43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
          46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
          49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
          71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback",
          90: "user_canceled", 109: "missing_extension", 110: "unsupported_extension",
          112: "unrecognized_name", 116: "certificate_required"}
# ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3)
_HRR = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def starts_tls(data: bytes) -> bool:
    """Do the first bytes of a direction look like a TLS record (not an RPC record mark)?"""
    return (len(data) >= 5 and CCS <= data[0] <= 24 and data[1] == 3 and data[2] <= 4
            and (data[3] << 8 | data[4]) <= MAX_TLS_RECORD)


def version_name(v: int | None) -> str | None:
    return None if v is None else VERSIONS.get(v, f"0x{v:04x}")


class _Side:
    __slots__ = ("buf", "skip", "hs", "encrypted", "bytes", "records", "data_records",
                 "data_bytes", "last_type", "last_len", "broken", "hello")

    def __init__(self):
        self.buf = bytearray()      # an incomplete clear record (or header)
        self.skip = 0               # bytes of an encrypted record body still to pass over
        self.hs = bytearray()       # clear handshake bytes not yet parsed into messages
        self.encrypted = False
        self.bytes = self.records = self.data_records = self.data_bytes = 0
        self.last_type = self.last_len = None
        self.broken: str | None = None
        self.hello = False


class TlsConn:
    """What the capture shows of one TLS connection; feed() returns the events it makes."""

    def __init__(self, source: str, keylog=None, on_plain=None):
        """on_plain(sent by client?, time_ns, data) -> events: decrypted application data."""
        self.source = source
        self.decryption = Decryption(keylog) if keylog is not None else None
        self.on_plain = on_plain
        self.client_random: bytes | None = None
        self.server_random: bytes | None = None
        self.sides = {True: _Side(), False: _Side()}
        self.version: int | None = None
        self.cipher: int | None = None
        self.sni: str | None = None
        self.offered: list[int] = []
        self.alerts: list[dict] = []
        self.hrr = False
        self.start_ns: int | None = None
        self.plain: set[bool] = set()       # directions (sent by client?) that spoke RPC

    # -- input -----------------------------------------------------------------------------
    def feed(self, conn: Conn, from_client: bool, time_ns: int, data: bytes) -> list[dict]:
        s = self.sides[from_client]
        if self.start_ns is None:
            self.start_ns = time_ns
        s.bytes += len(data)
        if s.broken:
            return []
        out: list[dict] = []
        pos = 0
        if s.skip:
            pos = min(s.skip, len(data))
            s.skip -= pos
        if pos < len(data):
            s.buf += data[pos:] if pos else data
        buf = s.buf
        while len(buf) >= 5:
            ctype, length = buf[0], buf[3] << 8 | buf[4]
            if not CCS <= ctype <= 24 or buf[1] != 3 or length > MAX_TLS_RECORD:
                s.broken = f"not a TLS record header ({bytes(buf[:5]).hex()})"
                buf.clear()
                break
            s.records += 1
            s.last_type, s.last_len = ctype, length
            if ctype == APPDATA or (s.encrypted and ctype != CCS
                                    and not (ctype == ALERT and length == 2)):
                if ctype == APPDATA:
                    s.data_records += 1
                    s.data_bytes += length
                whole = 5 + length
                if self.decryption is not None and self.decryption.reason is None:
                    if len(buf) < whole:
                        break                       # whole records only: they are decrypted
                    record = bytes(buf[:whole])
                    del buf[:whole]
                    out.extend(self._decrypt(conn, from_client, time_ns, record))
                    continue
                if ctype == ALERT:
                    out.append(self._alert(conn, from_client, time_ns, None, None))
                if len(buf) >= whole:
                    del buf[:whole]
                else:
                    s.skip = whole - len(buf)
                    buf.clear()
                continue
            if len(buf) < 5 + length:
                break
            body = bytes(buf[5:5 + length])
            del buf[:5 + length]
            if ctype == CCS:
                if self.version != 0x0304:      # TLS 1.3 sends CCS only for middleboxes
                    s.encrypted = True
            elif ctype == ALERT:
                if len(body) == 2:
                    out.append(self._alert(conn, from_client, time_ns, body[0], body[1]))
            elif ctype == HANDSHAKE:
                out.extend(self._handshake(conn, from_client, s, time_ns, body))
        return out

    def _decrypt(self, conn: Conn, from_client: bool, time_ns: int, record: bytes) -> list[dict]:
        out = []
        for sent_by_client, t, ctype, content in self.decryption.record(self, from_client,
                                                                         time_ns, record):
            if ctype == APPDATA and content and self.on_plain is not None:
                out.extend(self.on_plain(sent_by_client, t, content))
            elif ctype == ALERT and len(content) == 2:
                out.append(self._alert(conn, sent_by_client, t, content[0], content[1]))
        return out

    def gap(self, from_client: bool) -> None:
        """Bytes of this direction were not captured: record framing is lost for good."""
        s = self.sides[from_client]
        s.broken = s.broken or "capture gap"
        s.buf.clear()

    # -- handshake ---------------------------------------------------------------------------
    def _handshake(self, conn: Conn, from_client: bool, s: _Side, time_ns: int,
                   body: bytes) -> list[dict]:
        if len(s.hs) + len(body) > MAX_HANDSHAKE:
            s.broken = "handshake too long"
            s.hs.clear()
            return []
        s.hs += body
        out = []
        while len(s.hs) >= 4:
            mtype, mlen = s.hs[0], int.from_bytes(s.hs[1:4], "big")
            if mlen > MAX_HANDSHAKE:
                s.broken = "handshake message too long"
                s.hs.clear()
                break
            if len(s.hs) < 4 + mlen:
                break
            msg = bytes(s.hs[4:4 + mlen])
            del s.hs[:4 + mlen]
            try:
                if mtype == 1 and from_client:
                    self.client_random = msg[2:34] if len(msg) >= 34 else None
                    self._client_hello(msg)
                    s.hello = True
                elif mtype == 2 and not from_client:
                    s.hello = True
                    out.extend(self._server_hello(conn, time_ns, msg))
                elif mtype == 11 and self.version != 0x0304:
                    out.extend(self._certificates(conn, from_client, time_ns, msg))
            except (IndexError, ValueError):
                pass        # a message cut short: what it said before the cut is kept
        return out

    def _client_hello(self, m: bytes) -> None:
        pos = 2 + 32
        pos += 1 + m[pos]                                      # session id
        pos += 2 + int.from_bytes(m[pos:pos + 2], "big")       # cipher suites
        pos += 1 + m[pos]                                      # compression methods
        for etype, ext in _extensions(m, pos):
            if etype == 0 and len(ext) > 5 and ext[2] == 0:    # server_name, host_name
                n = int.from_bytes(ext[3:5], "big")
                self.sni = ext[5:5 + min(n, 255)].decode("ascii", "replace")
            elif etype == 43 and ext:                          # supported_versions
                self.offered = [int.from_bytes(ext[i:i + 2], "big")
                                for i in range(1, min(1 + ext[0], len(ext) - 1), 2)][:16]
        if not self.offered:
            self.offered = [int.from_bytes(m[0:2], "big")]

    def _server_hello(self, conn: Conn, time_ns: int, m: bytes) -> list[dict]:
        version = int.from_bytes(m[0:2], "big")
        self.hrr = m[2:34] == _HRR
        self.server_random = m[2:34]
        pos = 34
        pos += 1 + m[pos]
        self.cipher = int.from_bytes(m[pos:pos + 2], "big")
        for etype, ext in _extensions(m, pos + 3):
            if etype == 43 and len(ext) == 2:
                version = int.from_bytes(ext, "big")
        self.version = version
        if self.hrr:
            return []
        if version == 0x0304:   # everything after the ServerHello is encrypted, both ways
            for side in self.sides.values():
                side.encrypted = True
        ev = self._event(conn, "tls.handshake", time_ns, conn.client, conn.server,
                         tls_version=version_name(version), cipher=self.cipher_name(),
                         offered_versions=[version_name(v) for v in self.offered],
                         note=NOTE)
        if self.sni:
            ev["sni"] = self.sni
        if version == 0x0304:
            ev["certificates"] = HIDDEN_CERTS
        return [ev]

    def _certificates(self, conn: Conn, from_client: bool, time_ns: int, m: bytes) -> list[dict]:
        out = []
        end = min(len(m), 3 + int.from_bytes(m[0:3], "big"))
        pos = 3
        while pos + 3 <= end and len(out) < MAX_CERTS:
            n = int.from_bytes(m[pos:pos + 3], "big")
            der = m[pos + 3:pos + 3 + n]
            pos += 3 + n
            info = certificate_summary(der) if len(der) == n else None
            if info is None:
                continue
            src, dst = (conn.client, conn.server) if from_client else (conn.server, conn.client)
            valid = info["not_before_ns"] <= time_ns <= info["not_after_ns"]
            out.append(self._event(conn, "tls.certificate", time_ns, src, dst,
                                   sent_by="client" if from_client else "server",
                                   chain_index=len(out), **info, valid_at_capture=valid))
        return out

    def _alert(self, conn: Conn, from_client: bool, time_ns: int, level: int | None,
               code: int | None) -> dict:
        src, dst = (conn.client, conn.server) if from_client else (conn.server, conn.client)
        fields = {"sent_by": "client" if from_client else "server", "encrypted": code is None}
        if code is not None:
            fields.update(level={1: "warning", 2: "fatal"}.get(level, str(level)),
                          description=ALERTS.get(code, f"alert {code}"), code=code)
        if len(self.alerts) < MAX_ALERTS:
            self.alerts.append(fields)
        return self._event(conn, "tls.alert", time_ns, src, dst, **fields)

    # -- summary -----------------------------------------------------------------------------
    def close(self, conn: Conn, time_ns: int) -> dict:
        c, s = self.sides[True], self.sides[False]
        if not s.hello:
            stage = "no ServerHello" if c.hello else "no ClientHello"
        elif self.version == 0x0304 and c.data_records > TLS13_CLIENT_FLIGHT and s.data_records:
            stage = "encrypted data"
        elif self.version != 0x0304 and c.data_records and s.data_records \
                and c.encrypted and s.encrypted:
            stage = "encrypted data"
        else:
            stage = "handshake"
        ev = self._event(conn, "tls.connection", time_ns, conn.client, conn.server,
                         tls_version=version_name(self.version), cipher=self.cipher_name(),
                         stage=stage, client_bytes=c.bytes, server_bytes=s.bytes,
                         client_records=c.records, server_records=s.records,
                         client_data_records=c.data_records, server_data_records=s.data_records,
                         alerts=list(self.alerts), note=NOTE)
        dec = self.decryption
        if dec is not None:
            dec.close()
            ev.update(decrypted_records=dec.records, decrypted_bytes=dec.bytes,
                      handshake_records_passed=dec.skipped())
            if dec.dirs is not None:
                ev["note"] = DECRYPTED
            if dec.reason:
                ev["not_decrypted"] = dec.reason
        # TLS 1.3 hides alerts in application-data records; one of exactly this size as the
        # last thing a side sent is very likely one (where the records were not opened).
        for name, side in (("client", c), ("server", s)):
            if self.version == 0x0304 and side.last_type == APPDATA \
                    and side.last_len == ALERT_TLS13_LEN and (dec is None or dec.dirs is None):
                ev[f"{name}_last_record_alert_sized"] = True
            if side.broken:
                ev[f"{name}_unreadable"] = side.broken
            if dec is not None and (name == "client") in dec.broken:
                ev[f"{name}_undecrypted"] = dec.broken[name == "client"]
        if self.start_ns is not None:
            ev["start_ns"] = self.start_ns
        if self.plain:
            ev["plaintext_side"] = "client" if True in self.plain else "server"
        return ev

    def cipher_name(self) -> str | None:
        return None if self.cipher is None else CIPHERS.get(self.cipher, f"0x{self.cipher:04x}")

    def _event(self, conn: Conn, kind: str, time_ns: int, src: str, dst: str, **fields) -> dict:
        return {"time_ns": time_ns, "layer": "wire", "kind": kind, "source": self.source,
                "src": src, "dst": dst, "conn": conn.number, **fields}


def _extensions(m: bytes, pos: int):
    """(type, body) of each extension in a hello from `pos` (the 2-byte total length)."""
    if pos + 2 > len(m):
        return
    end = min(len(m), pos + 2 + int.from_bytes(m[pos:pos + 2], "big"))
    pos += 2
    count = 0
    while pos + 4 <= end and count < 64:
        etype, n = int.from_bytes(m[pos:pos + 2], "big"), int.from_bytes(m[pos + 2:pos + 4], "big")
        yield etype, m[pos + 4:pos + 4 + n]
        pos += 4 + n
        count += 1
