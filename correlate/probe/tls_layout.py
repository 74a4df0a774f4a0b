"""Where an OpenSSL build keeps a connection's session secrets, learnt by watching it.

`--probe tls-keys` reads, when a handshake returns, the client random and the secrets from
the SSL object. Their offsets are internal to OpenSSL (no header, no debug info on a
production host) and differ between versions and builds, so they are measured on the very
library the probes attach to: in a child process that loads it (two libsslx in one process
would collide), two handshakes over a socket pair, TLS 1.3 and TLS 1.2, with OpenSSL's own
key log callback saying what the secrets are; the SSL object's memory (malloc's usable size
of it) is then searched for them, and the session pointer for TLS 1.2's master secret. Each
offset must be the same in the client's and the server's object, both versions, or the
layout is refused with the reason: a wrong offset would log wrong keys, which decrypt
nothing.
"""
from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from .errors import ProbeError

SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_FILETYPE_PEM = 1
TLS1_2, TLS1_3 = 0x0303, 0x0304
SECRET_LEN = 48                 # read this much; a SHA-256 suite's secret is 32 of it


@dataclass(frozen=True)
class SslLayout:
    client_random: int          # in the SSL object
    client_secret: int          # CLIENT_TRAFFIC_SECRET_0 (TLS 1.3)
    server_secret: int          # SERVER_TRAFFIC_SECRET_0
    session: int                # the SSL_SESSION pointer
    master_key: int             # in the SSL_SESSION (TLS 1.2's master secret)


def measure(library: str, timeout: float = 30) -> SslLayout:
    """The layout of `library` (a libssl path), measured in a child process."""
    try:
        done = subprocess.run([sys.executable, "-m", __name__, library], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"measuring where {library} keeps session secrets took over "
                         f"{timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"cannot tell where {library} keeps session secrets: {last[:300]}")
    return SslLayout(**json.loads(done.stdout))


def _bind(lib) -> None:
    vp, i = ctypes.c_void_p, ctypes.c_int
    for name, res, args in (
            ("TLS_method", vp, []), ("SSL_CTX_new", vp, [vp]), ("SSL_new", vp, [vp]),
            ("SSL_CTX_use_certificate_file", i, [vp, ctypes.c_char_p, i]),
            ("SSL_CTX_use_PrivateKey_file", i, [vp, ctypes.c_char_p, i]),
            ("SSL_set_fd", i, [vp, i]), ("SSL_set_connect_state", None, [vp]),
            ("SSL_set_accept_state", None, [vp]), ("SSL_do_handshake", i, [vp]),
            ("SSL_get_session", vp, [vp]), ("SSL_CTX_ctrl", ctypes.c_long, [vp, i, ctypes.c_long, vp]),
            ("SSL_CTX_set_keylog_callback", None, [vp, vp]), ("SSL_free", None, [vp]),
            ("SSL_CTX_free", None, [vp])):
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args


def _certificate(directory: str) -> tuple[bytes, bytes]:
    cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-subj", "/CN=correlate-layout", "-days", "1"], check=True,
                   capture_output=True, timeout=20)
    return cert.encode(), key.encode()


def _handshake(lib, cert: tuple[bytes, bytes], version: int):
    """(client SSL*, server SSL*, {label: (client_random, secret)}) after a handshake."""
    lines: list[str] = []
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)(
        lambda _ssl, line: lines.append(line.decode()))
    server_ctx, client_ctx = lib.SSL_CTX_new(lib.TLS_method()), lib.SSL_CTX_new(lib.TLS_method())
    if lib.SSL_CTX_use_certificate_file(server_ctx, cert[0], SSL_FILETYPE_PEM) != 1 or \
            lib.SSL_CTX_use_PrivateKey_file(server_ctx, cert[1], SSL_FILETYPE_PEM) != 1:
        raise RuntimeError("the library refused a fresh P-256 certificate")
    for ctx in (server_ctx, client_ctx):
        lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, version, None)
        lib.SSL_CTX_set_keylog_callback(ctx, ctypes.cast(callback, ctypes.c_void_p))
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client, server = lib.SSL_new(client_ctx), lib.SSL_new(server_ctx)
    lib.SSL_set_fd(client, a.fileno())
    lib.SSL_set_fd(server, b.fileno())
    lib.SSL_set_connect_state(client)
    lib.SSL_set_accept_state(server)
    done = [False, False]
    for _ in range(50):
        for k, end in enumerate((client, server)):
            done[k] = done[k] or lib.SSL_do_handshake(end) == 1
        if all(done):
            break
    if not all(done):
        raise RuntimeError(f"a TLS {version:#06x} handshake with itself did not complete")
    logged = {}
    for line in lines:
        label, client_random, secret = line.split()
        logged[label] = (bytes.fromhex(client_random), bytes.fromhex(secret))
    # keep the sockets and callback alive with the objects (read after this returns)
    return client, server, logged, (a, b, callback)


def _offset(memory: bytes, value: bytes, what: str) -> int:
    at = memory.find(value)
    if at < 0 or memory.find(value, at + 1) >= 0:
        raise RuntimeError(f"{what} is {'not' if at < 0 else 'more than once'} in the SSL object")
    return at


def _measure_here(path: str) -> SslLayout:
    lib = ctypes.CDLL(path)
    _bind(lib)
    libc = ctypes.CDLL(None)
    libc.malloc_usable_size.restype = ctypes.c_size_t
    libc.malloc_usable_size.argtypes = [ctypes.c_void_p]

    def memory(pointer: int) -> bytes:
        return ctypes.string_at(pointer, libc.malloc_usable_size(pointer))

    found: dict[str, set[int]] = {}
    with tempfile.TemporaryDirectory(prefix="correlate-layout-") as d:
        cert = _certificate(d)
        for version in (TLS1_3, TLS1_2):
            client, server, logged, _alive = _handshake(lib, cert, version)
            for ssl in (client, server):
                mem = memory(ssl)
                if version == TLS1_3:
                    random, secret = logged["CLIENT_TRAFFIC_SECRET_0"]
                    found.setdefault("client_random", set()).add(_offset(mem, random, "the client random"))
                    found.setdefault("client_secret", set()).add(_offset(mem, secret, "CLIENT_TRAFFIC_SECRET_0"))
                    found.setdefault("server_secret", set()).add(
                        _offset(mem, logged["SERVER_TRAFFIC_SECRET_0"][1], "SERVER_TRAFFIC_SECRET_0"))
                else:
                    random, master = logged["CLIENT_RANDOM"]
                    found.setdefault("client_random", set()).add(_offset(mem, random, "the client random"))
                    session = lib.SSL_get_session(ssl)
                    pointer = struct.pack("<Q", session)
                    at = [k for k in range(0, len(mem) - 7, 8) if mem[k:k + 8] == pointer]
                    if len(at) != 1:
                        raise RuntimeError("the session pointer is not once in the SSL object")
                    found.setdefault("session", set()).add(at[0])
                    found.setdefault("master_key", set()).add(
                        _offset(memory(session), master, "the master secret"))
    uneven = [name for name, offsets in found.items() if len(offsets) != 1]
    if uneven:
        raise RuntimeError(f"offsets differ between objects: {', '.join(uneven)}")
    return SslLayout(**{name: offsets.pop() for name, offsets in found.items()})


def main(argv: list[str]) -> int:
    try:
        layout = _measure_here(argv[0])
    except (OSError, RuntimeError, KeyError, ValueError, subprocess.SubprocessError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(layout)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
