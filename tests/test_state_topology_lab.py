"""`--topology live` against the lab's real glusterd: the bricks and ports it reports are the
ones the lab knows (read-only gluster commands)."""
from correlate.state import volume_xml


def test_live_topology_is_the_running_glusterd_s(lab):
    volumes = {v.name: v for v in volume_xml.read(["live"])}
    vol = volumes[lab.volume]
    assert {(lab.host, b.path): b.port for b in lab.bricks if b.port} == vol.ports
    assert [path for _host, path in vol.bricks] == [b.path for b in lab.bricks]
