"""Decrypting one direction of a TLS connection whose secrets are known (tls_keys.KeyLog).

TLS 1.3 (RFC 8446 7.1-7.3, 5.2-5.3): the application traffic secret of each direction gives
its key and IV by HKDF-Expand-Label; each record's nonce is the IV XOR its sequence number,
its additional data the 5-byte record header; a KeyUpdate moves the secret on. A key log
that has only the application secrets (what `--probe tls-keys` reads after the handshake)
cannot open the handshake's own encrypted records: a record that does not authenticate before
the first one that does is such a record and is passed over. TLS 1.2 (RFC 5246 6.3, 5288,
7905): the key block from the master secret and both randoms; AES-GCM and ChaCha20-Poly1305
suites (the ones Gluster's OpenSSL negotiates); CBC suites are not decrypted (said once).
The AEAD tag proves every record: a wrong key or a lost byte is an error, never garbage.
"""
from __future__ import annotations

import hmac

# suite -> (version family, cipher, key length, hash)
SUITES = {0x1301: (13, "aes-gcm", 16, "sha256"), 0x1302: (13, "aes-gcm", 32, "sha384"),
          0x1303: (13, "chacha20", 32, "sha256"),
          0xC02B: (12, "aes-gcm", 16, "sha256"), 0xC02F: (12, "aes-gcm", 16, "sha256"),
          0x009E: (12, "aes-gcm", 16, "sha256"), 0xC02C: (12, "aes-gcm", 32, "sha384"),
          0xC030: (12, "aes-gcm", 32, "sha384"), 0x009F: (12, "aes-gcm", 32, "sha384"),
          0xCCA8: (12, "chacha20", 32, "sha256"), 0xCCA9: (12, "chacha20", 32, "sha256"),
          0xCCAA: (12, "chacha20", 32, "sha256")}
HASH_LEN = {"sha256": 32, "sha384": 48}
TAG = 16
HANDSHAKE, KEY_UPDATE = 22, 24


class DecryptError(Exception):
    """A record that should have opened did not (wrong key, damaged or missing bytes)."""


def unsupported(suite: int | None) -> str | None:
    """Why records of this suite cannot be decrypted (None: they can)."""
    if suite is None:
        return "no ServerHello in the capture (it started after the connection was set up)"
    if suite not in SUITES:
        return f"cipher suite 0x{suite:04x} is not decrypted (AES-GCM and ChaCha20-Poly1305 are)"
    return None


def load_ciphers():
    """The AEAD classes, imported when a key log is opened, before any packet: importing
    them takes 0.2 s, long enough for a live capture's kernel buffer to overflow if it
    happened at the first encrypted record."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        from cryptography.exceptions import InvalidTag  # noqa: F401
    except ImportError:         # a dependency; said plainly where it is missing
        raise DecryptError("decrypting TLS needs the Python package `cryptography`") from None
    return AESGCM, ChaCha20Poly1305


def _aead(cipher: str, key: bytes):
    aes_gcm, chacha = load_ciphers()
    return aes_gcm(key) if cipher == "aes-gcm" else chacha(key)


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hkdf_expand(hash_name, secret, info, length)


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.2's PRF: P_hash(secret, label + seed)."""
    seed = label + seed
    a, out = seed, b""
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


class Tls13Direction:
    """One direction's application records under TLS 1.3."""

    def __init__(self, suite: int, secret: bytes):
        _family, self.cipher, self.key_len, self.hash = SUITES[suite]
        self.established = False        # a record has opened: from now on each one must
        self.skipped = 0                # handshake records passed over (no handshake keys)
        self._keys(secret[:HASH_LEN[self.hash]])

    def _keys(self, secret: bytes) -> None:
        self.secret = secret
        self.aead = _aead(self.cipher, hkdf_expand_label(self.hash, secret, b"key", self.key_len))
        self.iv = int.from_bytes(hkdf_expand_label(self.hash, secret, b"iv", 12), "big")
        self.seq = 0

    def decrypt(self, header: bytes, body: bytes) -> tuple[int, bytes] | None:
        """(inner content type, content), or None for a handshake record passed over."""
        from cryptography.exceptions import InvalidTag
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")
        try:
            inner = self.aead.decrypt(nonce, body, header)
        except InvalidTag:
            if not self.established:
                self.skipped += 1
                return None
            raise DecryptError(f"record {self.seq} did not authenticate") from None
        self.established = True
        self.seq += 1
        end = len(inner.rstrip(b"\x00"))
        if not end:
            raise DecryptError("a record with no content type")
        ctype, content = inner[end - 1], inner[:end - 1]
        if ctype == HANDSHAKE and _has_key_update(content):
            self._keys(hkdf_expand_label(self.hash, self.secret, b"traffic upd", len(self.secret)))
        return ctype, content


class Tls12Direction:
    """One direction's records after its ChangeCipherSpec under TLS 1.2."""

    def __init__(self, suite: int, key: bytes, iv: bytes):
        _family, self.cipher, _key_len, _hash = SUITES[suite]
        self.aead = _aead(self.cipher, key)
        self.iv = iv
        self.seq = 0
        self.established = True
        self.skipped = 0

    def decrypt(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        from cryptography.exceptions import InvalidTag
        if self.cipher == "aes-gcm":
            nonce, body = self.iv + body[:8], body[8:]
        else:
            nonce = (int.from_bytes(self.iv, "big") ^ self.seq).to_bytes(12, "big")
        if len(body) < TAG:
            raise DecryptError("a record shorter than its tag")
        aad = self.seq.to_bytes(8, "big") + header[:3] + (len(body) - TAG).to_bytes(2, "big")
        try:
            content = self.aead.decrypt(nonce, body, aad)
        except InvalidTag:
            raise DecryptError(f"record {self.seq} did not authenticate") from None
        self.seq += 1
        return header[0], content


def directions(version: int, suite: int, secrets: dict[str, bytes], client_random: bytes,
               server_random: bytes | None) -> dict[bool, object] | None:
    """{sent by the client?: direction decryptor} from a connection's logged secrets, or None
    when the log has not the ones this version needs."""
    if version == 0x0304:
        client, server = secrets.get("CLIENT_TRAFFIC_SECRET_0"), secrets.get("SERVER_TRAFFIC_SECRET_0")
        if client is None or server is None:
            return None
        return {True: Tls13Direction(suite, client), False: Tls13Direction(suite, server)}
    master = secrets.get("CLIENT_RANDOM")
    if master is None or server_random is None:
        return None
    _family, cipher, key_len, hash_name = SUITES[suite]
    iv_len = 4 if cipher == "aes-gcm" else 12
    block = prf12(hash_name, master, b"key expansion", server_random + client_random,
                  2 * key_len + 2 * iv_len)
    ck, sk = block[:key_len], block[key_len:2 * key_len]
    civ, siv = block[2 * key_len:2 * key_len + iv_len], block[2 * key_len + iv_len:]
    return {True: Tls12Direction(suite, ck, civ), False: Tls12Direction(suite, sk, siv)}


def _has_key_update(content: bytes) -> bool:
    pos = 0
    while pos + 4 <= len(content):
        if content[pos] == KEY_UPDATE:
            return True
        pos += 4 + int.from_bytes(content[pos + 1:pos + 4], "big")
    return False


MAX_WAIT_BYTES = 1 << 20         # a connection's records held while its keys are awaited
MAX_WAIT_ALL = 64 << 20          # ... and all connections' together
MAX_WAIT_NS = 10_000_000_000     # keys come within a probe poll or two; give up after this


class Decryption:
    """One connection's encrypted records -> (sent by client?, time, content type, content).

    With a key log that is still being written (`keylog.follow`), records that come before
    their keys are held, in arrival order (so a call still comes before its reply), up to
    MAX_WAIT_BYTES and MAX_WAIT_NS; `reason` says why a connection was not decrypted."""

    def __init__(self, keylog):
        self.keylog = keylog
        self.dirs: dict[bool, object] | None = None
        self.reason: str | None = None
        self.broken: dict[bool, str] = {}
        self.records = self.bytes = 0
        self._waiting: list[tuple[bool, int, bytes]] = []
        self._waiting_bytes = 0

    def record(self, hello, from_client: bool, time_ns: int, record: bytes) -> list[tuple]:
        """`hello`: the TlsConn, for its version, suite and randoms."""
        if self.reason is not None or from_client in self.broken:
            return []
        if self.dirs is None:
            self._hold(from_client, time_ns, record)
            self.dirs = self._directions(hello, time_ns)
            if self.dirs is None:
                return []
            queued, self._waiting = self._waiting, []
            self._release_wait()
        else:
            queued = [(from_client, time_ns, record)]
        out = []
        for sent_by_client, t, rec in queued:
            if sent_by_client in self.broken:
                continue
            try:
                opened = self.dirs[sent_by_client].decrypt(rec[:5], rec[5:])
            except DecryptError as exc:
                self.broken[sent_by_client] = str(exc)
                continue
            if opened is not None:
                self.records += 1
                self.bytes += len(opened[1])
                out.append((sent_by_client, t, *opened))
        return out

    def skipped(self) -> int:
        return sum(d.skipped for d in (self.dirs or {}).values())

    def close(self) -> None:
        if self.dirs is None and self.reason is None and self._waiting:
            self.reason = "no keys for this connection in the key log"
        self._release_wait()

    def _hold(self, from_client: bool, time_ns: int, record: bytes) -> None:
        self._waiting.append((from_client, time_ns, record))
        self._waiting_bytes += len(record)
        self.keylog.waiting_bytes += len(record)

    def _release_wait(self) -> None:
        self.keylog.waiting_bytes -= self._waiting_bytes
        self._waiting_bytes = 0
        self._waiting.clear()

    def _directions(self, hello, time_ns: int):
        why = unsupported(hello.cipher if hello.version is not None else None)
        if why is None and hello.client_random is None:
            why = "no ClientHello in the capture"
        if why is None and (hello.version == 0x0304) != (SUITES[hello.cipher][0] == 13):
            why = f"cipher suite 0x{hello.cipher:04x} does not go with {hello.version:#06x}"
        if why is not None:
            self.reason = why
            self._release_wait()
            return None
        secrets = self.keylog.lookup(hello.client_random, wait=self.keylog.follow)
        dirs = None if secrets is None else directions(hello.version, hello.cipher, secrets,
                                                        hello.client_random, hello.server_random)
        if dirs is not None:
            return dirs
        first = self._waiting[0][1] if self._waiting else time_ns
        if not self.keylog.follow or time_ns - first > MAX_WAIT_NS \
                or self._waiting_bytes > MAX_WAIT_BYTES or self.keylog.waiting_bytes > MAX_WAIT_ALL:
            self.reason = ("no keys for this connection in the key log" if secrets is None else
                           "the key log lacks the secrets this TLS version needs")
            self._release_wait()
        return None
