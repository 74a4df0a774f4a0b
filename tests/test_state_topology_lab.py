"""`--topology live` against the lab's real glusterd: the bricks and ports it reports are the
ones glusterd's own status gives at that moment (read-only gluster commands)."""
from correlate.state import volume_xml
from tests.lab import gluster, lab as lab_module


def test_live_topology_is_the_running_glusterd_s(lab):
    # read now, not from the session's start: a brick an earlier test restarted has a new port
    with lab_module.exclusive():
        now = gluster.volume_state(lab.volume).bricks
        volumes = {v.name: v for v in volume_xml.read(["live"])}
    vol = volumes[lab.volume]
    assert {(lab.host, b.path): b.port for b in now if b.port} == vol.ports
    assert [path for _host, path in vol.bricks] == [b.path for b in now]
