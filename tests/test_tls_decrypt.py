"""TLS decryption from a key log (correlate/wire/tls_decrypt.py, tls_keys.py): real TLS made
by this machine's OpenSSL (Python's ssl over memory BIOs, which writes the NSS key log), its
bytes fed to the RPC sink as a capture's would be."""
from __future__ import annotations

import ssl
import subprocess

import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire.model import Conn
from correlate.wire.rpc import RpcSink
from correlate.wire.tls_decrypt import hkdf_expand_label
from correlate.wire.tls_keys import KeyLog, KeyLogError

# A Gluster DUMP call (program 123451501, procedure 1, AUTH_NULL) and its reply
CALL = (b"\x80\x00\x00\x28" + bytes.fromhex("00000007" "00000000" "00000002" "075bb86d"
                                            "00000001" "00000001") + bytes(16))
REPLY = b"\x80\x00\x00\x2c" + bytes.fromhex("00000007" "00000001" "00000000") + bytes(8) + \
    bytes(4) + bytes.fromhex("0000000000000001" "00000000" "00000000" "00000000")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "k.pem"), "-out",
                    str(d / "c.pem"), "-subj", "/CN=lab", "-days", "1"],
                   check=True, capture_output=True)
    return d / "c.pem", d / "k.pem"


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO, wire: list[bytes]) -> None:
    data = src.read()
    if data:
        wire.append(data)
        dst.write(data)


def tls_session(cert, keylog, *, version=ssl.TLSVersion.TLSv1_3, ciphers=None,
                exchanges=3) -> list[tuple[bool, bytes]]:
    """A real handshake and `exchanges` call/reply pairs; the bytes each side sent, in order."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*map(str, cert))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    for ctx in (server_ctx, client_ctx):
        ctx.maximum_version = version
        if ciphers:
            ctx.set_ciphers(ciphers)
    client_ctx.keylog_filename = str(keylog)
    bios = [ssl.MemoryBIO() for _ in range(4)]      # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1])
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    sent: list[tuple[bool, bytes]] = []

    def flush():
        for side, (out, into) in ((True, (bios[1], bios[2])), (False, (bios[3], bios[0]))):
            wire: list[bytes] = []
            _pump(out, into, wire)
            sent.extend((side, chunk) for chunk in wire)

    for _ in range(10):
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        flush()
    for _ in range(exchanges):
        client.write(CALL)
        flush()
        assert server.read(4096) == CALL
        server.write(REPLY)
        flush()
        assert client.read(4096) == REPLY
    return sent


def feed(sent, keylog: KeyLog | None, diag=None):
    sink = RpcSink("t", diag or Diagnostics("t"), keylog=keylog)
    conn = Conn("127.0.0.1:1000", "127.0.0.2:49152", 1)
    out = []
    for t, (from_client, data) in enumerate(sent, 1):
        out += sink.on_data(conn, from_client, t * 1000, data)
    return out + sink.on_close(conn, 10**9)


@pytest.mark.parametrize("version,ciphers", [
    (ssl.TLSVersion.TLSv1_3, None),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305")])
def test_calls_and_replies_inside_tls_are_decoded_with_the_key_log(cert, tmp_path, version, ciphers):
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys, version=version, ciphers=ciphers)
    events = feed(sent, KeyLog(str(keys)))
    calls = [e for e in events if e["kind"] == "rpc.call"]
    replies = [e for e in events if e["kind"] == "rpc.reply"]
    assert [c["procedure"] for c in calls] == ["DUMP"] * 3
    assert len(replies) == 3 and all(r["xid"] == 7 for r in replies)
    (summary,) = [e for e in events if e["kind"] == "tls.connection"]
    assert summary["decrypted_records"] >= 6 and "not_decrypted" not in summary
    assert summary["note"].startswith("encrypted Gluster connection, decrypted")


def test_without_keys_nothing_is_decoded_and_the_reason_is_said(cert, tmp_path):
    sent = tls_session(cert, tmp_path / "keys.log")
    other = tmp_path / "other.log"
    other.write_text("CLIENT_TRAFFIC_SECRET_0 " + "00" * 32 + " " + "11" * 48 + "\n")
    events = feed(sent, KeyLog(str(other)))
    assert not [e for e in events if e["kind"].startswith("rpc.")]
    (summary,) = [e for e in events if e["kind"] == "tls.connection"]
    assert summary["not_decrypted"] == "no keys for this connection in the key log"
    assert "--tls-keylog" in summary["note"]


def test_a_wrong_key_is_an_error_not_garbage(cert, tmp_path):
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys, version=ssl.TLSVersion.TLSv1_2,
                       ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    [line] = [ln.split() for ln in keys.read_text().splitlines() if ln.startswith("CLIENT_RANDOM")]
    keys.write_text(f"{line[0]} {line[1]} {'ab' * 48}\n")
    events = feed(sent, KeyLog(str(keys)))
    assert not [e for e in events if e["kind"].startswith("rpc.")]
    (summary,) = [e for e in events if e["kind"] == "tls.connection"]
    assert "did not authenticate" in summary["client_undecrypted"]


def test_a_flipped_byte_stops_that_direction_only_where_it_is(cert, tmp_path):
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys, exchanges=4)
    # the third call's bytes (client side, the last four client chunks are the calls)
    client_chunks = [i for i, (c, _) in enumerate(sent) if c]
    i = client_chunks[-2]
    data = bytearray(sent[i][1])
    data[-3] ^= 0x40
    sent[i] = (True, bytes(data))
    events = feed(sent, KeyLog(str(keys)))
    assert len([e for e in events if e["kind"] == "rpc.call"]) == 2
    (summary,) = [e for e in events if e["kind"] == "tls.connection"]
    assert "did not authenticate" in summary["client_undecrypted"]


def test_keys_that_come_later_are_waited_for_when_the_log_is_followed(cert, tmp_path):
    """A live run: the probe logs a connection's keys a poll after its first records."""
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys)
    logged = keys.read_text()
    keys.write_text("")
    keylog = KeyLog(str(keys), follow=True)
    sink = RpcSink("t", Diagnostics("t"), keylog=keylog)
    conn = Conn("127.0.0.1:1000", "127.0.0.2:49152", 1)
    out = []
    for t, (from_client, data) in enumerate(sent[:-2], 1):
        out += sink.on_data(conn, from_client, t * 1000, data)
    assert not [e for e in out if e["kind"].startswith("rpc.")]
    keys.write_text(logged)
    keylog._checked = 0.0
    for t, (from_client, data) in enumerate(sent[-2:], len(sent) - 1):
        out += sink.on_data(conn, from_client, t * 1000, data)
    kinds = [e["kind"] for e in out if e["kind"].startswith("rpc.")]
    assert kinds == ["rpc.call", "rpc.reply"] * 3     # in the order they were sent
    assert keylog.waiting_bytes == 0


def test_key_log_reading_is_bounded_and_skips_bad_lines(tmp_path):
    path = tmp_path / "k.log"
    path.write_bytes(b"# comment\nEXPORTER_SECRET " + b"00" * 32 + b" " + b"22" * 48 + b"\n"
                     b"CLIENT_RANDOM zz 00\n" + b"CLIENT_RANDOM " + b"ab" * 600 + b"\n"
                     b"CLIENT_RANDOM " + b"01" * 32 + b" " + b"02" * 48 + b"\n\xff\xfe\n")
    keylog = KeyLog(str(path))
    assert keylog.secrets == {bytes([1]) * 32: {"CLIENT_RANDOM": bytes([2]) * 48}}
    assert keylog.bad_lines == 3
    with pytest.raises(KeyLogError, match="No such file"):
        KeyLog(str(tmp_path / "missing"))


def test_hkdf_expand_label_matches_rfc8448():
    """RFC 8448 3 (simple 1-RTT handshake): the server handshake key and IV from its secret."""
    secret = bytes.fromhex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
    assert hkdf_expand_label("sha256", secret, b"key", 16).hex() == "3fce516009c21727d0f2e4e86ee403bc"
    assert hkdf_expand_label("sha256", secret, b"iv", 12).hex() == "5d313eb2671276ee13000b30"


def test_any_segmentation_gives_the_same_calls(cert, tmp_path):
    """TCP cuts the records anywhere after a direction's first segment (its hello, which
    tells TLS from RPC): fed a byte at a time up to whole flights, the same calls."""
    import random
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys)
    rng = random.Random(7)
    pieces = []
    for k, (from_client, data) in enumerate(sent):
        if k < 2:
            pieces.append((from_client, data))
            continue
        pos = 0
        while pos < len(data):
            n = rng.choice((1, 2, 5, 17, 300, len(data)))
            pieces.append((from_client, data[pos:pos + n]))
            pos += n
    whole = [e["kind"] for e in feed(sent, KeyLog(str(keys))) if e["kind"].startswith("rpc.")]
    cut = [e["kind"] for e in feed(pieces, KeyLog(str(keys))) if e["kind"].startswith("rpc.")]
    assert cut == whole == ["rpc.call", "rpc.reply"] * 3


def test_mutated_sessions_never_raise(cert, tmp_path):
    """Hostile input: flipped, dropped and repeated bytes in a real session with its keys."""
    import random
    keys = tmp_path / "keys.log"
    sent = tls_session(cert, keys, exchanges=2)
    keylog = KeyLog(str(keys))
    rng = random.Random(11)
    for _ in range(200):
        mutated = []
        for from_client, data in sent:
            data = bytearray(data)
            for _ in range(rng.randrange(3)):
                op, at = rng.randrange(3), rng.randrange(len(data))
                if op == 0:
                    data[at] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del data[at:at + rng.randrange(1, 40)]
                else:
                    data[at:at] = data[at:at + rng.randrange(1, 40)]
            mutated.append((from_client, bytes(data)))
        diag = Diagnostics("t")
        events = feed(mutated, keylog, diag)
        assert [e for e in events if e["kind"] == "tls.connection"]


# -- real captures of the lab's TLS volume with the keys --probe tls-keys logged ---------------
CAPTURES = __import__("pathlib").Path(__file__).parent / "captures"


def _decoded(name: str, keys: bool = True):
    from correlate.wire.decode import decode_capture
    diag = Diagnostics(name)
    keylog = KeyLog(str(CAPTURES / f"{name}.keys")) if keys else None
    return list(decode_capture(str(CAPTURES / f"{name}.pcap"), diag=diag, keylog=keylog)), diag


@pytest.mark.parametrize("name", ["tls-keys-healthy", "tls-keys-healthy12"])
def test_probed_keys_open_the_workload_on_a_real_capture(name):
    """`workload --files 3 --size 1024` on tlsvol: with the key log every fop of it is decoded
    from the capture, to brick ports; without, none is."""
    from collections import Counter
    events, diag = _decoded(name)
    brick_calls = Counter(e["procedure"] for e in events if e["kind"] == "rpc.call"
                          and int(e["dst"].rsplit(":", 1)[1]) >= 49152)
    assert brick_calls["CREATE"] == 3 and brick_calls["WRITE"] == 3 and brick_calls["SETVOLUME"] == 2
    writes = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "WRITE"]
    assert [w["op_ret"] for w in writes] == [1024] * 3
    conns = [e for e in events if e["kind"] == "tls.connection"]
    assert len(conns) == 2 and all(c["decrypted_records"] and "not_decrypted" not in c
                                   and "client_undecrypted" not in c for c in conns)
    assert not diag.counts, diag.summary_lines()
    blind, _ = _decoded(name, keys=False)
    assert not [e for e in blind if e["kind"] == "rpc.call" and int(e["dst"].rsplit(":", 1)[1]) >= 49152]


@pytest.mark.skipif(__import__("shutil").which("tshark") is None, reason="tshark is not installed")
def test_tls12_decryption_matches_tshark():
    """tshark decrypts TLS 1.2 from the same key log (CLIENT_RANDOM): the same records and
    bytes. (It cannot check TLS 1.3 here: it needs the handshake secrets, which the probe
    does not read.)"""
    import re
    events, _ = _decoded("tls-keys-healthy12")
    conns = [e for e in events if e["kind"] == "tls.connection"]
    ports = sorted({c["dst"].rsplit(":", 1)[1] for c in conns})
    args = [a for p in ports for a in ("-d", f"tcp.port=={p},tls")]
    out = subprocess.run(["tshark", "-r", str(CAPTURES / "tls-keys-healthy12.pcap"), "-o",
                          f"tls.keylog_file:{CAPTURES / 'tls-keys-healthy12.keys'}", *args, "-x"],
                         capture_output=True, text=True, timeout=120).stdout
    sizes = [int(n) for n in re.findall(r"Decrypted TLS \((\d+) bytes\)", out)]
    assert len(sizes) == sum(c["decrypted_records"] for c in conns)
    assert sum(sizes) == sum(c["decrypted_bytes"] for c in conns)


def test_command_line_key_log_errors_are_one_line(tmp_path):
    import sys
    missing = tmp_path / "missing.keys"
    done = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--tls-keylog", str(missing),
                           str(CAPTURES / "tls-keys-healthy.pcap")], capture_output=True, text=True)
    assert done.returncode == 2 and "--tls-keylog" in done.stderr and "No such file" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "correlate", "run", "--probe", "tls-keys"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--probe tls-keys" in done.stderr and "--pcap" in done.stderr


@pytest.mark.parametrize("command", [["decode"], ["analyze", "--json", "--events"], ["profile", "--json"],
                                     ["timeline", "--json"]])
def test_every_capture_command_decrypts_with_the_key_log(command):
    import sys
    args = [*command, "--tls-keylog", str(CAPTURES / "tls-keys-healthy.keys"),
            str(CAPTURES / "tls-keys-healthy.pcap")]
    done = subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "CREATE" in done.stdout and "WRITE" in done.stdout
