"""Brick identity from `gluster volume info/status --xml` when the capture began after the
clients connected, and the shared state as the only place detectors learn it from.

tests/captures/brick-hang-late.pcap is brick-hang.pcap from 0.54 s after its last SETVOLUME
reply on (`editcap -A 1796160677.5`): no GETSPEC, no PORTBYBRICK of b1/b3, no SETVOLUME
until the reconnect at the end. tests/fixtures/topology/hangvol.xml is the lab glusterd's
`volume info hangvol --xml` and `volume status hangvol --xml` (ports edited: see its comment).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.detector import load_detectors
from correlate.plugin_manager import get_plugin_manager
from correlate.state import GlusterState, volume_xml
from correlate.state.files import FileNames
from correlate.state.topology import Topology

ROOT = Path(__file__).parent
LATE = ROOT / "captures" / "brick-hang-late.pcap"
XML = ROOT / "fixtures" / "topology" / "hangvol.xml"
B = "/srv/correlate-lab/hangvol/b"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def findings(*args) -> list[dict]:
    res = cli("analyze", "--json", LATE, *args)
    assert res.returncode == 0, res.stderr
    return [e for e in map(json.loads, res.stdout.splitlines()) if e["kind"] == "finding"]


def test_the_cut_capture_holds_no_handshake_before_the_hang():
    res = cli("decode", "--fields", "time_ns,procedure", LATE)
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    procs = [p for _t, p in rows]
    first_reconnect = procs.index("PORTBYBRICK")
    assert "GETSPEC" not in procs and "SETVOLUME" not in procs[:first_reconnect]
    hang_reported = 1796160686961825000     # the client's FIN: brick-not-responding's finding
    assert int(rows[first_reconnect][0]) > hang_reported


def test_xml_gives_ports_paths_and_the_replica_set():
    (vol,) = volume_xml.read([XML])
    assert vol.name == "hangvol"
    assert vol.ports == {("127.0.0.2", f"{B}1"): 49204, ("127.0.0.2", f"{B}2"): 49226,
                         ("127.0.0.2", f"{B}3"): 49169}
    assert vol.sets == [("hangvol-replicate-0", [("127.0.0.2", f"{B}{i}") for i in (1, 2, 3)])]
    topo = Topology()
    topo.seed([vol])
    assert topo.brick("127.0.0.2:49169") == f"{B}3" and topo.volume("127.0.0.2:49169") == "hangvol"
    assert topo.peers("127.0.0.2:49226") == (["127.0.0.2:49204", "127.0.0.2:49169"],
                                             "volfile hangvol-replicate-0")


def test_info_and_status_in_two_files_make_the_same_volume(tmp_path):
    text = XML.read_text()
    info, status = re.findall(r"<\?xml.*?</cliOutput>", text, re.S)
    (tmp_path / "info.xml").write_text(info)
    (tmp_path / "status.xml").write_text(status)
    assert volume_xml.read([tmp_path / "info.xml", tmp_path / "status.xml"]) == volume_xml.read([XML])
    (only_info,) = volume_xml.read([tmp_path / "info.xml"])
    assert only_info.sets and not only_info.ports       # sets without ports: no endpoint named


def test_disperse_sets_are_named_as_the_client_graph_names_them():
    doc = ("<cliOutput><opRet>0</opRet><volInfo><volumes><volume><name>d</name>"
           "<replicaCount>1</replicaCount><disperseCount>3</disperseCount><bricks>"
           + "".join(f"<brick><name>h:/b{i}</name></brick>" for i in range(6))
           + "</bricks></volume></volumes></volInfo></cliOutput>")
    (vol,) = volume_xml.parse(doc)
    assert [name for name, _ in vol.sets] == ["d-disperse-0", "d-disperse-1"]
    assert vol.sets[1][1] == [("h", "/b3"), ("h", "/b4"), ("h", "/b5")]


@pytest.mark.parametrize("text, says", [
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
     "<cliOutput><opRet>0</opRet></cliOutput>", "DTD"),
    ("<cliOutput><opRet>0</opRet><volInfo>", "no <cliOutput>"),
    ("<cliOutput><opRet>0</opRet><volInfo></cliOutput>", "line 1"),
    ("<cliOutput><opRet>-1</opRet><opErrstr>Volume x does not exist</opErrstr></cliOutput>",
     "Volume x does not exist"),
    ("hello", "no <cliOutput>"),
])
def test_hostile_or_wrong_xml_is_one_line_naming_the_input(tmp_path, text, says):
    path = tmp_path / "topo.xml"
    path.write_text(text)
    with pytest.raises(volume_xml.TopologyError, match=re.escape(says)):
        volume_xml.read([path])
    res = cli("analyze", LATE, "--topology", path)
    assert res.returncode == 2 and str(path) in res.stderr and says in res.stderr
    assert "Traceback" not in res.stderr


def test_oversized_and_binary_files_are_refused_before_parsing(tmp_path, monkeypatch):
    big = tmp_path / "big.xml"
    big.write_bytes(b"<cliOutput>" + b" " * 100 + b"</cliOutput>")
    monkeypatch.setattr(volume_xml, "MAX_BYTES", 64)
    with pytest.raises(volume_xml.TopologyError, match="larger than"):
        volume_xml.read([big])
    monkeypatch.undo()
    binary = tmp_path / "bin.xml"
    binary.write_bytes(b"\xff\xfe<\x00")
    with pytest.raises(volume_xml.TopologyError, match="not UTF-8"):
        volume_xml.read([binary])


def test_volumes_and_bricks_stay_within_their_limits(monkeypatch):
    monkeypatch.setattr(volume_xml, "MAX_VOLUMES", 3)
    monkeypatch.setattr(volume_xml, "MAX_BRICKS", 2)
    doc = ("<cliOutput><opRet>0</opRet><volStatus><volumes>"
           + "".join(f"<volume><volName>v{v}</volName>"
                     + "".join(f"<node><hostname>h</hostname><path>/b{i}</path><port>{49152 + i}"
                               "</port></node>" for i in range(5))
                     + "</volume>" for v in range(10))
           + "</volumes></volStatus></cliOutput>")
    vols = volume_xml.parse(doc)
    assert len(vols) == 3 and all(len(v.ports) == 2 for v in vols)


def test_findings_name_brick_and_set_with_the_topology_and_not_without():
    without = findings()
    assert [f.get("brick") for f in without] == [None, None]
    assert "the brick at 127.0.0.2:49226" in without[0]["title"]
    assert "VOLNAME" in without[0]["remedy"]
    seeded = findings("--topology", XML)
    assert [f.get("brick") for f in seeded] == [f"{B}2", None]   # the second: an info line
    assert f"127.0.0.2:{B}2 (port 49226)" in seeded[0]["title"]
    assert "hangvol-replicate-0" in seeded[0]["explanation"]
    assert "gluster volume status hangvol" in seeded[0]["remedy"]


def test_profile_names_every_brick_and_volume_with_the_topology_and_not_without():
    def bricks(*args):
        res = cli("profile", "--json", LATE, *args)
        assert res.returncode == 0, res.stderr
        return {b["server"]: (b["brick"], b["volume"]) for b in json.loads(res.stdout)["bricks"]}
    without = bricks()
    # b2 is named only by the reconnect at the very end; b1 and b3 never
    assert without["127.0.0.2:49204"] == (None, None) == without["127.0.0.2:49169"]
    assert bricks("--topology", XML) == {
        "127.0.0.2:24007": ("glusterd", None),
        "127.0.0.2:49204": (f"{B}1", "hangvol"), "127.0.0.2:49226": (f"{B}2", "hangvol"),
        "127.0.0.2:49169": (f"{B}3", "hangvol")}


def test_live_asks_gluster_and_gives_up_when_it_hangs(tmp_path, monkeypatch):
    fake = tmp_path / "gluster"
    fake.write_text(f"#!/bin/sh\ncase \"$*\" in *info*) sed -n '1,/<\\/cliOutput>/p' {XML};; "
                    f"*) sed -n '/<\\/cliOutput>/,$p' {XML} | tail -n +2;; esac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert volume_xml.read(["live"]) == volume_xml.read([XML])
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    with pytest.raises(volume_xml.TopologyError, match="did not answer in 0.5 s"):
        volume_xml.read_live(timeout=0.5)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(volume_xml.TopologyError, match="no `gluster` command"):
        volume_xml.read_live()


def test_no_builtin_detector_keeps_its_own_topology_files_or_calls():
    plugins = ROOT.parent / "plugins"
    private = re.compile(r"\b(Topology|FileNames|Files|Calls|Clients|Bricks)\(\)")
    offenders = [f"{p.name}: {m.group(0)}" for p in plugins.glob("*.py")
                 for m in private.finditer(p.read_text())]
    assert offenders == []
    state = GlusterState()
    detectors, _errors = load_detectors(get_plugin_manager(), {}, state)
    shared = (Topology, FileNames, type(state.calls), type(state.clients), type(state.bricks))
    for det in detectors:
        if not type(det).__module__.startswith("correlate.plugins."):
            continue
        for name, value in vars(det).items():
            if isinstance(value, GlusterState):
                assert value is state, f"{det.id}.{name} is not the shared state"
            assert not isinstance(value, shared), f"{det.id}.{name} is a private {type(value).__name__}"


def test_the_documented_shared_state_example_names_brick_volume_and_file():
    """docs/plugins.md's third-party example, run as written on a real capture."""
    from correlate.testing import run_detector
    doc = (ROOT.parent / "docs" / "plugins.md").read_text()
    section = doc[doc.index("A third-party detector that names the brick"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    state = GlusterState()
    (det,) = namespace["correlate_detectors"](state=state)
    found = run_detector(det, ROOT / "captures" / "reserve-full.pcap")
    (f,) = found
    assert f["title"].startswith("WRITE to /existing failed on /srv/correlate-lab/reservevol/")
    assert "ENOSPC" in f["title"] and "volume reservevol" in f["explanation"]
    assert "offset 0" in f["explanation"] and f["evidence"][0]["kind"] == "rpc.call"


@pytest.mark.parametrize("command", [["run", "--json", "--pcap"], ["timeline", "--json"]])
def test_run_and_timeline_take_the_topology_too(command):
    def bricks(*args):
        res = cli(*command, LATE, *args)
        assert res.returncode == 0, res.stderr
        return [e.get("brick") for e in map(json.loads, res.stdout.splitlines())
                if e.get("kind") == "finding" and e.get("detector") == "brick-not-responding"]
    assert bricks() == [None, None]
    assert bricks("--topology", XML) == [f"{B}2", None]
