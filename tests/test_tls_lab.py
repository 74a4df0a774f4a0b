"""TLS volumes on the real lab (tests/lab/tls.py): `--probe tls` decodes a TLS volume's traffic
as a capture decodes a plaintext one, and the TLS failures reproduced live get their names.
Needs root, bcc and the lab; skips saying why."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.plugins.tls_failure import TlsFailure
from correlate.testing import events_of, run_detector

pytestmark = [pytest.mark.bpf, pytest.mark.lab]


def test_probe_tls_counts_equal_the_plaintext_capture(tls_lab, tmp_path):
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    from tests.lab import tls
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        pytest.skip(str(exc))
    directory, log, plain = tls.plaintext_baseline(tmp_path)

    run = subprocess.Popen([sys.executable, "-m", "correlate", "run", "--probe", "tls", "--json",
                            "--events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        while "probes attached" not in err and run.poll() is None:
            err += run.stderr.readline()
        assert run.poll() is None, err
        tls.workload("tlsvol", directory, log)
    finally:
        run.send_signal(signal.SIGTERM)
        out, rest = run.communicate(timeout=60)
    assert run.returncode == 0, err + rest
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    wire = [e for e in events if e.get("layer") == "wire"]
    assert wire and all(e["source"] == "tls" for e in wire)
    through_tls = tls.calls_to_bricks("tlsvol", wire)
    assert through_tls["WRITE"] == 20 and through_tls["SETVOLUME"] == 2
    tls.assert_same_calls(through_tls, plain)
    replies = [e for e in wire if e["kind"] == "rpc.reply" and e["procedure"] == "WRITE"]
    assert len(replies) == 20 and all(e["op_ret"] == 4096 for e in replies)
    assert not [e for e in events if e.get("kind") == "finding" and e["severity"] != "info"]


def _record(tmp_path: Path, name: str, identity, volume: str = "tlsvol"):
    from tests.lab import lab as lab_module
    from tests.lab import tls
    from tests.lab.capture import Tcpdump
    pcap, log = tmp_path / f"{name}.pcap", tmp_path / f"{name}.client.log"
    with Tcpdump(pcap, lab_module.DEFAULT_FILTER):
        result = tls.gfapi(["init", "--volume", volume, "--log", str(log)], identity=identity,
                           timeout=15)
    return result, pcap, log


def test_ca_mismatch_reproduced_and_named(tls_lab, tmp_path):
    result, pcap, log = _record(tmp_path, "ca", tls_lab.foreign)
    assert result["status"] == "error" and result["errno"] == 5          # glfs_init: EIO
    (f,) = run_detector(TlsFailure(), events_of(pcap, log))
    assert f["cause"] == "ca-mismatch" and "unknown_ca" in f["explanation"]


def test_cn_not_allowed_reproduced_and_named(tls_lab, tmp_path):
    result, pcap, log = _record(tmp_path, "cn", tls_lab.intruder)
    assert result["status"] == "hung"                # SETVOLUME refused: glfs_init waits
    found = run_detector(TlsFailure(), events_of(pcap, log))
    assert [f["cause"] for f in found if f["severity"] != "info"] == ["cn-not-allowed"]


def test_healthy_tls_mount_gives_no_finding(tls_lab, tmp_path):
    result, pcap, log = _record(tmp_path, "ok", None)
    assert result["status"] == "ok"
    events = events_of(pcap, log)
    assert [e["kind"] for e in events].count("tls.handshake") == 2
    assert [f["severity"] for f in run_detector(TlsFailure(), events)] == ["info"]


def test_hung_brick_on_tls_volume_named_through_probe_tls(tls_lab, tmp_path):
    """SIGSTOP the brick holding the file a client writes: with nothing but --probe tls the
    unanswered calls and PING are seen inside TLS, and brick-not-responding names the brick."""
    import time
    from tests.lab import tls
    tls.ensure_volume("tlsvol", {**tls.TLS_OPTIONS, "network.ping-timeout": "5"})
    run = subprocess.Popen([sys.executable, "-m", "correlate", "run", "--probe", "tls", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        while "probes attached" not in err and run.poll() is None:
            err += run.stderr.readline()
        index = tls.write_through_a_paused_brick("tlsvol", "/hang", tmp_path / "hang.log")
        time.sleep(2)
    finally:
        run.send_signal(signal.SIGTERM)
        out, rest = run.communicate(timeout=60)
        tls.ensure_volume("tlsvol")
    findings = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    hung = [f for f in findings if f.get("detector") == "brick-not-responding"
            and f.get("severity") == "error"]
    assert hung, err + rest
    assert f"tlsvol/b{index + 1}" in hung[0]["title"] and "(from SETVOLUME)" in hung[0]["explanation"]
    assert all(e["source"] == "tls" for e in hung[0]["evidence"] if e.get("layer") == "wire")


def test_cn_refusal_seen_inside_tls_through_the_probe(tls_lab):
    """The SETVOLUME reply that refuses a CN is encrypted on the wire; --probe tls shows it,
    and tls-failure names the cause from it alone."""
    result, events = _probed_init(tls_lab.intruder)
    assert result["status"] == "hung"
    refused = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "SETVOLUME"]
    assert refused and all(e["op_errno"] == 13 and e["source"] == "tls" for e in refused)
    found = run_detector(TlsFailure(), events)
    assert [f["cause"] for f in found] == ["cn-not-allowed"]


def _probed_init(identity, volume: str = "tlsvol", **gfapi_options) -> tuple[dict, list[dict]]:
    """glfs_init as `identity` while --probe tls's collector runs, polled as a run polls."""
    import threading
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    from correlate.probe.tls_collector import TlsCollector
    from tests.lab import tls
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        pytest.skip(str(exc))
    collector = TlsCollector().start()
    done: dict = {}
    client = threading.Thread(target=lambda: done.update(tls.gfapi(
        ["init", "--volume", volume, "--log", "/dev/null"], identity=identity, timeout=8,
        **gfapi_options)))
    events: list[dict] = []
    try:
        client.start()
        while client.is_alive():
            events += collector.poll(100)
    finally:
        events += collector.stop()
    return done, events


def test_failed_handshakes_named_from_openssl_in_the_processes(tls_lab):
    """No capture, no log: the failed SSL_connect/SSL_accept's own OpenSSL error names the
    cause. A foreign CA: the client's 'certificate verify failed' with X509's reason; an
    expired client certificate: the bricks' SSL_accept says 'certificate has expired'."""
    result, events = _probed_init(tls_lab.foreign)
    assert result["status"] == "error"
    errors = [e for e in events if e["kind"] == "tls.error"]
    connect = [e for e in errors if e["function"] == "SSL_connect"]
    assert connect and all(e["reason"] == "certificate verify failed" and e["verify_result"]
                           in (19, 20) and e["dst"].startswith("127.0.0.2:") for e in connect)
    found = [f for f in run_detector(TlsFailure(), events) if f["severity"] != "info"]
    assert found and {f["cause"] for f in found} == {"ca-mismatch"}
    assert "certificate verify failed" in " ".join(f["explanation"] for f in found)

    result, events = _probed_init(tls_lab.expired)
    assert result["status"] == "error"
    accept = [e for e in events if e["kind"] == "tls.error" and e["function"] == "SSL_accept"]
    assert accept and all(e["verify_result"] == 10 and e["comm"].startswith("glfs_")
                          for e in accept)
    # the client's address, read from the brick's socket at the failure
    assert all(e["src"].startswith("127.0.0.1:") and e["dst"].startswith("127.0.0.2:")
               for e in accept), accept
    found = run_detector(TlsFailure(), events)
    assert {f["cause"] for f in found} == {"expired"}
    assert "certificate has expired" in found[0]["explanation"]
    assert "from the client 127.0.0.1:" in found[0]["explanation"] and found[0]["client"]


def test_healthy_handshakes_raise_no_tls_error(tls_lab):
    """libcrypto raises and pops errors on every handshake (decoders tried in turn): they
    must not read as failures."""
    result, events = _probed_init(None)
    assert result["status"] == "ok"
    assert not [e for e in events if e["kind"] == "tls.error"]


def test_management_encryption_on_the_client_only(tls_lab, tmp_path):
    """secure-access on the client alone (its own mount namespace; the lab's glusterd stays
    plaintext): its ClientHello to glusterd:24007 is closed unanswered. The capture alone and
    the probe alone (SSL_connect: 'unexpected eof while reading') each name it, with the
    secure-access remedy; the client cannot fetch its volfile."""
    from tests.lab import lab as lab_module
    from tests.lab.capture import Tcpdump
    pcap = tmp_path / "mgmt.pcap"
    with Tcpdump(pcap, lab_module.DEFAULT_FILTER):
        result, probed = _probed_init(None, "tlsvolplain", secure_access=True)
    assert result["status"] == "error" and result["errno"] == 107       # ENOTCONN
    errors = [e for e in probed if e["kind"] == "tls.error"]
    assert errors and all(e["dst"] == "127.0.0.2:24007" for e in errors)
    for events in (probed, events_of(pcap)):
        found = [f for f in run_detector(TlsFailure(), events) if f["severity"] != "info"]
        assert {f["cause"] for f in found} == {"management-plaintext"}, found
        assert "secure-access" in found[0]["remedy"] and "24007" in found[0]["explanation"]
