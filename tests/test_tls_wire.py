"""TLS on Gluster ports, from the lab's TLS captures (tests/captures/tls-*.pcap, see the README
there): recognised as TLS, what crosses in clear read out, never counted as RPC damage, and
the parser bounded on hostile bytes. tshark cross-checks what it decodes."""
from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire.decode import decode_capture
from correlate.wire.der import certificate_summary
from correlate.wire.model import Conn
from correlate.wire.tls import MAX_HANDSHAKE, NOTE, TlsConn, starts_tls

CAPTURES = Path(__file__).parent / "captures"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def decoded(name: str) -> tuple[list[dict], Diagnostics]:
    diag = Diagnostics(name)
    return list(decode_capture(str(CAPTURES / name), diag=diag)), diag


def of_kind(events, kind):
    return [e for e in events if e["kind"] == kind]


def test_healthy_tls13_volume_is_recognised_not_damage():
    events, diag = decoded("tls-healthy.pcap")
    hs = of_kind(events, "tls.handshake")
    assert len(hs) == 2                         # one per brick
    for h in hs:
        assert h["tls_version"] == "TLS 1.3" and h["cipher"] == "TLS_AES_256_GCM_SHA384"
        assert h["note"] == NOTE and "TLS 1.3 encrypts the certificates" in h["certificates"]
        assert h["dst"].startswith("127.0.0.2:49")
    conns = of_kind(events, "tls.connection")
    assert [c["stage"] for c in conns] == ["encrypted data"] * 2
    assert all(c["client_data_records"] > 20 for c in conns)
    assert not of_kind(events, "tls.alert")
    # management traffic to glusterd stays plaintext RPC and is still decoded
    assert {e["procedure"] for e in of_kind(events, "rpc.call")} == {"GETSPEC", "DUMP", "PING",
                                                                     "PORTBYBRICK"}
    assert not diag.counts, diag.summary_lines()


def test_tls12_certificates_are_read_from_the_handshake():
    events, diag = decoded("tls-healthy12.pcap")
    certs = of_kind(events, "tls.certificate")
    leafs = [c for c in certs if c["chain_index"] == 0]
    assert {c["sent_by"] for c in leafs} == {"client", "server"}
    for c in leafs:
        assert c["subject"] == "CN=correlate-lab-node" and c["issuer"] == "CN=correlate-lab-ca"
        assert c["valid_at_capture"] and c["not_before_ns"] < c["time_ns"] < c["not_after_ns"]
    assert {h["tls_version"] for h in of_kind(events, "tls.handshake")} == {"TLS 1.2"}
    assert not diag.counts


def test_expired_client_certificate_in_clear_under_tls12():
    events, _ = decoded("tls-expired12.pcap")
    expired = [c for c in of_kind(events, "tls.certificate")
               if c["sent_by"] == "client" and c["chain_index"] == 0]
    assert expired and not any(c["valid_at_capture"] for c in expired)
    assert expired[0]["not_after_ns"] == 1577836800 * 10**9          # 2020-01-01T00:00:00Z
    alerts = of_kind(events, "tls.alert")
    assert {(a["sent_by"], a["description"], a["level"]) for a in alerts} == \
        {("server", "certificate_expired", "fatal")}


@pytest.mark.parametrize("name", ["tls-ca-mismatch.pcap", "tls-ca-mismatch12.pcap"])
def test_ca_mismatch_alert_is_in_clear_even_under_tls13(name):
    # OpenSSL's client has not switched to handshake keys when it rejects the server's
    # certificate: its alert goes out in clear in TLS 1.3 too.
    events, _ = decoded(name)
    alerts = of_kind(events, "tls.alert")
    assert len(alerts) == 2 and all(a["description"] == "unknown_ca" and a["sent_by"] == "client"
                                    and not a["encrypted"] for a in alerts)
    assert [c["stage"] for c in of_kind(events, "tls.connection")] == ["handshake"] * 2


def test_tls13_server_side_rejection_shows_as_a_cut_handshake():
    events, _ = decoded("tls-expired.pcap")       # the brick rejects the client's certificate
    conns = of_kind(events, "tls.connection")
    assert [c["stage"] for c in conns] == ["handshake"] * 2
    assert all(c["server_last_record_alert_sized"] for c in conns)
    assert not of_kind(events, "tls.alert")        # its alert is encrypted


def test_plaintext_server_never_answers_the_client_hello():
    events, diag = decoded("tls-client-only.pcap")
    conns = of_kind(events, "tls.connection")
    assert [(c["stage"], c["server_bytes"]) for c in conns] == [("no ServerHello", 0)] * 2
    assert not diag.counts


def test_rpc_answered_by_tls_is_one_side_plaintext():
    """A client speaking RPC to a brick that answers with TLS: the client direction stays RPC,
    the connection is marked as TLS with a plaintext side."""
    sink_events = _feed_two_sides(
        client=b"\x80\x00\x00\x28" + bytes.fromhex("00000001" "00000000" "00000002" "075bcd6d"
                                                   "00000001" "00000001") + bytes(24),
        server=bytes.fromhex("15030300020232"))
    (conn,) = of_kind(sink_events, "tls.connection")
    assert conn["plaintext_side"] == "client"
    (alert,) = of_kind(sink_events, "tls.alert")
    assert alert["sent_by"] == "server" and alert["description"] == "decode_error"


def _feed_two_sides(client: bytes, server: bytes) -> list[dict]:
    from correlate.wire.rpc import RpcSink
    sink = RpcSink("t", Diagnostics("t"))
    conn = Conn("127.0.0.1:1000", "127.0.0.2:49152", 1)
    return [*sink.on_data(conn, True, 1, client), *sink.on_data(conn, False, 2, server),
            *sink.on_close(conn, 3)]


@needs_tshark
@pytest.mark.parametrize("name", ["tls-healthy.pcap", "tls-healthy12.pcap", "tls-expired12.pcap",
                                  "tls-ca-mismatch.pcap", "tls-ca-mismatch12.pcap",
                                  "tls-client-only.pcap"])
def test_matches_tshark(name):
    events, _ = decoded(name)

    def rows(flt, fields):
        out = subprocess.run(["tshark", "-r", str(CAPTURES / name), "-Y", flt, "-T", "fields",
                              *[a for f in fields for a in ("-e", f)]],
                             capture_output=True, text=True, check=True).stdout
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    hellos = rows("tls.handshake.type == 2", ["frame.number"])
    assert sorted(int(f) for (f,) in hellos) == sorted(e["frame"] for e in
                                                       of_kind(events, "tls.handshake"))
    theirs = sorted((int(f), int(d)) for f, d in rows("tls.alert_message.desc",
                                                      ["frame.number", "tls.alert_message.desc"]))
    ours = sorted((e["frame"], e["code"]) for e in of_kind(events, "tls.alert") if "code" in e)
    assert ours == theirs


# -- hostile input -------------------------------------------------------------------------

def test_starts_tls_rejects_rpc_marks_and_oversized_records():
    assert starts_tls(bytes.fromhex("1603010100"))
    assert not starts_tls(bytes.fromhex("80000028"))            # an RPC record mark
    assert not starts_tls(bytes.fromhex("16030148ff"))          # longer than any TLS record


def test_handshake_buffer_is_bounded():
    tls = TlsConn("t")
    conn = Conn("a:1", "b:2", 1)
    # a handshake message claiming 16 MiB, fed as many clear records
    tls.feed(conn, True, 1, bytes.fromhex("160301") + (4 + 1000).to_bytes(2, "big")
             + b"\x01\xff\xff\xff" + bytes(1000))
    for _ in range(200):
        tls.feed(conn, True, 1, bytes.fromhex("16030103e8") + bytes(1000))
    side = tls.sides[True]
    assert len(side.hs) <= MAX_HANDSHAKE and len(side.buf) < 5 + (1 << 15)
    assert side.broken


def test_mutated_tls_streams_never_raise():
    rng = random.Random(24)
    seed = bytes.fromhex("16030100") + bytes([200]) + b"\x01\x00\x00\xc4\x03\x03" + bytes(190)
    cert_src = (CAPTURES / "tls-healthy12.pcap").read_bytes()
    for i in range(400):
        data = bytearray(seed if i % 2 else cert_src[rng.randrange(len(cert_src) - 3000):][:3000])
        for _ in range(rng.randrange(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        tls = TlsConn("t")
        conn = Conn("a:1", "b:2", 1)
        at = 0
        while at < len(data):
            n = rng.randrange(1, 400)
            tls.feed(conn, bool(i % 3), 1, bytes(data[at:at + n]))
            at += n
        tls.close(conn, 2)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        certificate_summary(b"\x30\x82" + blob)
