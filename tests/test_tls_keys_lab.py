"""`--probe tls-keys` on the lab: keys read at the handshake from the real libssl of the real
Gluster processes, a real tcpdump capture decrypted with them, live and afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from correlate.probe.tls_keys import keylog_lines
from correlate.wire.tls_keys import KeyLog

pytestmark = [pytest.mark.bpf, pytest.mark.lab]


@pytest.fixture
def bcc():
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        pytest.skip(str(exc))


def _events(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def test_layout_is_measured_on_this_machines_libssl():
    from correlate.probe.resolve import find_library
    from correlate.probe.tls_layout import measure
    layout = measure(find_library("libssl.so.3"))
    # the client random and the three secrets do not overlap inside the SSL object
    spans = sorted([(layout.client_random, 32), (layout.client_secret, 48),
                    (layout.server_secret, 48), (layout.session, 8)])
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))


def test_key_log_lines_from_a_record():
    random = bytes(range(32))
    tls13 = keylog_lines(random, b"\x01" * 32 + bytes(16), b"\x02" * 32 + bytes(16), b"\x03" * 48)
    assert tls13 == [f"CLIENT_TRAFFIC_SECRET_0 {random.hex()} {'01' * 32}\n",
                     f"SERVER_TRAFFIC_SECRET_0 {random.hex()} {'02' * 32}\n"]
    assert keylog_lines(random, bytes(48), bytes(48), b"\x03" * 48) == \
        [f"CLIENT_RANDOM {random.hex()} {'03' * 48}\n"]
    assert keylog_lines(random, bytes(48), bytes(48), bytes(48)) == []


def test_live_capture_decrypted_with_probed_keys_counts_as_plaintext(tls_lab, bcc, tmp_path):
    """The same workload on a plaintext volume (captured) and on the TLS volume (captured and
    decrypted live with the keys --probe tls-keys reads): the same calls to its bricks."""
    from tests.lab import tls
    from tests.lab.live import LivePipeline
    directory, log, plain = tls.plaintext_baseline(tmp_path)

    keys, timeline = tmp_path / "keys.log", tmp_path / "timeline.jsonl"
    pipe = LivePipeline(["--probe", "tls-keys", "--tls-keylog", str(keys), "--events"], timeline)
    try:
        pipe.wait_ready()
        tls.workload("tlsvol", directory, log)
        time.sleep(1)
    finally:
        code = pipe.stop()
    assert code == 0, "".join(pipe.stderr)
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert len(KeyLog(str(keys)).secrets) >= 2            # a connection per brick at least
    events = _events(timeline)
    decrypted = tls.calls_to_bricks("tlsvol", events)
    assert decrypted["WRITE"] == 20 and decrypted["SETVOLUME"] == 2, decrypted
    tls.assert_same_calls(decrypted, plain)
    replies = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "WRITE"
               and e["src"].rsplit(":", 1)[1] in {str(p) for p in _ports("tlsvol")}]
    assert len(replies) == 20 and all(e["op_ret"] == 4096 for e in replies)
    tls = [e for e in events if e["kind"] == "tls.connection" and e.get("decrypted_records")]
    assert tls and all("not_decrypted" not in e for e in tls)
    assert not [e for e in events if e.get("kind") == "finding" and e["severity"] != "info"]


def _ports(volume: str) -> set[int]:
    from tests.lab import volumes
    return {b.port for b in volumes.bricks(volume)}


def test_hung_brick_on_tls_volume_named_from_the_decrypted_capture(tls_lab, bcc, tmp_path):
    """SIGSTOP the brick a client writes to: the capture, decrypted with the probed keys, shows
    the unanswered calls, and brick-not-responding names the brick; the saved capture and
    key log give the same finding afterwards."""
    from tests.lab import lab as lab_module
    from tests.lab import tls
    from tests.lab.capture import Tcpdump
    tls.ensure_volume("tlsvol", {**tls.TLS_OPTIONS, "network.ping-timeout": "5"})
    keys, pcap = tmp_path / "keys.log", tmp_path / "hang.pcap"
    run = subprocess.Popen([sys.executable, "-m", "correlate", "run", "--probe", "tls-keys",
                            "--tls-keylog", str(keys), "--duration", "40"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        while "probes attached" not in err and run.poll() is None:
            err += run.stderr.readline()
        assert run.poll() is None, err
        with Tcpdump(pcap, lab_module.DEFAULT_FILTER):
            index = tls.write_through_a_paused_brick("tlsvol", "/hang-keys", tmp_path / "hang.log")
            time.sleep(2)
    finally:
        run.terminate()
        run.communicate(timeout=60)
        tls.ensure_volume("tlsvol")
    out = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json",
                          "--tls-keylog", str(keys), str(pcap)], capture_output=True, text=True)
    findings = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    hung = [f for f in findings if f.get("detector") == "brick-not-responding"
            and f.get("severity") == "error"]
    assert hung, out.stdout + out.stderr
    assert f"tlsvol/b{index + 1}" in hung[0]["title"]
    blind = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", str(pcap)],
                           capture_output=True, text=True)
    assert "brick-not-responding" not in blind.stdout     # without the keys: not seen
