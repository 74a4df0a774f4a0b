"""tls-failure on the lab's TLS captures and the Gluster logs recorded with them
(tests/captures/README.md, "TLS volumes"): each failure named with its cause and remedy,
healthy TLS traffic left alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from correlate.plugins.tls_failure import REMEDY, TlsFailure
from correlate.testing import run_detector, events_of

CAPTURES = Path(__file__).parent / "captures"


def findings(*names: str) -> list[dict]:
    return run_detector(TlsFailure(), events_of(*(CAPTURES / n for n in names)))


def causes(found: list[dict]) -> list[str]:
    return sorted(f["cause"] for f in found)


@pytest.mark.parametrize("names", [("tls-healthy.pcap", "tls-healthy.client.log"),
                                   ("tls-healthy12.pcap", "tls-healthy12.client.log")])
def test_healthy_tls_gives_only_the_note_that_rpc_is_hidden(names):
    (f,) = findings(*names)
    assert f["severity"] == "info" and f["cause"] == "encrypted" and f["count"] == 1
    assert "--probe tls" in f["remedy"] and "2 TLS connection(s)" in f["explanation"]


@pytest.mark.parametrize("capture", ["tls-ca-mismatch.pcap", "tls-ca-mismatch12.pcap"])
def test_ca_mismatch_from_the_clear_alert(capture):
    (f,) = findings(capture, capture.replace(".pcap", ".client.log"))
    assert f["cause"] == "ca-mismatch" and f["count"] == 2          # both bricks, one host
    assert "client does not trust the CA of the server's certificate" in f["explanation"]
    assert f["remedy"] == REMEDY["ca-mismatch"] and "glusterfs.ca" in f["remedy"]
    assert any(e["kind"] == "log.message" and "certificate verify failed" in e["message"]
               for e in f["evidence"])


def test_ca_mismatch_from_the_client_log_alone():
    (f,) = findings("tls-ca-mismatch.client.log")
    assert f["cause"] == "handshake-failed"
    assert "the client (tlsvol-client-0) rejected the brick's certificate" in f["explanation"]
    assert "glusterfs.ca" in f["remedy"] and "-dates" in f["remedy"]


def test_cn_not_allowed_over_tls():
    (f, note) = findings("tls-cn-not-allowed.pcap", "tls-cn-not-allowed.client.log",
                         "tls-cn-not-allowed.brick.log")
    assert note["cause"] == "encrypted"
    assert f["cause"] == "cn-not-allowed" and "auth.ssl-allow" in f["remedy"]
    assert f["count"] >= 2


def test_setvolume_refusal_without_tls_is_not_a_cn_problem():
    # the same client log lines, with the lines that say TLS was on taken out: auth.allow
    # or auth.reject refusing a plaintext client is auth-rejected's, not this detector's
    lines = [e for e in events_of(CAPTURES / "tls-cn-not-allowed.client.log")
             if e.get("function") != "ssl_setup_connection_params"]
    assert any("SETVOLUME on remote-host failed" in str(e.get("message")) for e in lines)
    assert run_detector(TlsFailure(), lines) == []


def test_expired_named_with_dates_under_tls12():
    (f,) = findings("tls-expired12.pcap", "tls-expired12.client.log")
    assert f["cause"] == "expired"
    assert "from 2019-01-01 00:00:00 UTC to 2020-01-01 00:00:00 UTC" in f["explanation"]
    assert "server rejected the client's certificate" in f["explanation"]


def test_expired_under_tls13_is_a_verify_failure_that_says_what_it_cannot_see():
    (f,) = findings("tls-expired.pcap", "tls-expired.client.log", "tls-expired.brick.log")
    assert f["cause"] == "handshake-failed"
    assert "the brick (tcp.tlsvol-server) rejected the client's certificate" in f["explanation"]
    assert "TLS 1.3" in f["explanation"]


def test_client_tls_against_plaintext_brick():
    (f,) = findings("tls-client-only.pcap", "tls-client-only.client.log",
                    "tls-client-only.brick.log")
    assert f["cause"] == "server-plaintext" and "wrong MSG-TYPE" in f["explanation"]
    assert "server.ssl on" in f["remedy"] and "secure-access" in f["remedy"]


def test_plaintext_client_against_tls_brick():
    # no TLS byte crosses: the brick resets the client's DUMP; its log says why
    found = findings("tls-server-only.pcap", "tls-server-only.client.log",
                     "tls-server-only.brick.log")
    assert causes(found) == ["client-plaintext"]
    (f,) = found
    assert f["count"] == 2 and "reset by the server" in f["explanation"]
    assert "client.ssl on" in f["remedy"]
    assert findings("tls-server-only.pcap") == []      # the wire alone does not say TLS


def _tls_error(**fields):
    ev = {"time_ns": 1_000, "layer": "probe", "kind": "tls.error", "source": "tls",
          "function": "SSL_connect", "pid": 42, "tid": 43, "comm": "glfs_epoll000", "retval": -1,
          "host": "client1"}
    ev.update(fields)
    return ev


def test_a_process_error_names_each_cause():
    from correlate.plugins.tls_failure import TlsFailure
    from correlate.testing import run_detector
    cases = [
        (_tls_error(reason="certificate verify failed", verify_result=10,
                    verify_error="certificate has expired", dst="10.0.0.5:49152"), "expired"),
        (_tls_error(reason="certificate verify failed", verify_result=20,
                    verify_error="unable to get local issuer certificate"), "ca-mismatch"),
        (_tls_error(function="SSL_accept", reason="tlsv1 alert unknown ca"), "ca-mismatch"),
        (_tls_error(function="SSL_accept", reason="wrong version number"), "client-plaintext"),
        (_tls_error(reason="the peer closed the connection", retval=0, dst="10.0.0.5:49152"),
         "server-plaintext"),
        (_tls_error(reason="unexpected eof while reading", dst="10.0.0.5:24007"),
         "management-plaintext"),
    ]
    for ev, cause in cases:
        (f,) = run_detector(TlsFailure(), [ev])
        assert f["cause"] == cause and f["severity"] == "error", (ev, f)
    (f,) = run_detector(TlsFailure(), [cases[-1][0]])
    assert "secure-access" in f["remedy"] and "10.0.0.5" in f["explanation"]
