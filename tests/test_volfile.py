"""Replica/disperse sets from a client volfile (GETSPEC), and the peers they give."""
from correlate.state.topology import Topology, client_label
from correlate.gluster.volfile import MAX_MEMBERS, brick_sets

VOLFILE = """volume v-client-0
    type protocol/client
    option remote-host 127.0.0.2
    option remote-subvolume /b/1
end-volume
volume v-client-1
    type protocol/client
    option remote-host 127.0.0.2
    option remote-subvolume /b/2
end-volume
volume v-disperse-0
    type cluster/disperse
    option redundancy 1
    subvolumes v-client-0 v-client-1 v-missing
end-volume
volume v-dht
    type cluster/distribute
    subvolumes v-disperse-0
end-volume
"""


def test_sets_with_their_bricks_unknown_members_left_out():
    [s] = brick_sets(VOLFILE)
    assert (s.name, s.kind) == ("v-disperse-0", "disperse")
    assert s.bricks == (("127.0.0.2", "/b/1"), ("127.0.0.2", "/b/2"))


def test_garbage_and_huge_member_lists_stay_bounded():
    assert brick_sets("subvolumes a b\nend-volume\n\x00\x01 volume\n") == []
    members = " ".join(f"c{i}" for i in range(10 * MAX_MEMBERS))
    clients = "".join(f"volume c{i}\ntype protocol/client\nend-volume\n" for i in range(10 * MAX_MEMBERS))
    [s] = brick_sets(clients + f"volume r\ntype cluster/replicate\nsubvolumes {members}\nend-volume\n")
    assert len(s.bricks) == MAX_MEMBERS


def test_peers_from_volfile_then_from_volume():
    topo = Topology()
    topo.observe({"kind": "rpc.reply", "procedure": "GETSPEC",
                  "result": {"brick_sets": [{"name": "v-disperse-0", "type": "disperse",
                                             "bricks": [["127.0.0.2", "/b/1"], ["127.0.0.2", "/b/2"]]}]}})
    for port, path in ((49152, "/b/1"), (49153, "/b/2"), (49154, "/b/3")):
        topo.observe({"kind": "rpc.call", "procedure": "SETVOLUME", "source": "s", "conn": port,
                      "dst": f"127.0.0.2:{port}",
                      "args": {"dict": {"remote-subvolume": path, "volfile-key": "v",
                                        "process-uuid": "CTX_ID:x-GRAPH_ID:0-PID:77-HOST:h-PC_NAME:v-client-0-RECON_NO:-0"}}})
    assert topo.peers("127.0.0.2:49152") == (["127.0.0.2:49153"], "volfile v-disperse-0")
    assert topo.peers("127.0.0.2:49154") == (["127.0.0.2:49152", "127.0.0.2:49153"], "volume v")
    assert topo.client_of({"kind": "rpc.call", "source": "s", "conn": 49152}) == "pid 77 on h"


def test_client_label():
    assert client_label("no pid here") is None
    assert client_label("CTX_ID:a-b-GRAPH_ID:0-PID:30452-HOST:vm-PC_NAME:x-RECON_NO:-0") == "pid 30452 on vm"
