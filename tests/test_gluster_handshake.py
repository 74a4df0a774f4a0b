"""Handshake (SETVOLUME, GETSPEC), Portmap (PORTBYBRICK) and DUMP through RpcSink."""
from correlate.gluster import dicts, programs
from correlate.xdr import Packer
from tests.test_gluster_dicts import dict3, gfx_dict
from tests.test_rpc import DUMP, HNDSK, PMAP, call_msg, cred_v3, new_sink, record, reply_msg


def exchange(prog, vers, proc, args, result, xid=9):
    sink, diag, conn = new_sink()
    [call] = sink.on_data(conn, True, 10, record(call_msg(xid, prog, vers, proc, args, cred_v3())))
    [reply] = sink.on_data(conn, False, 30, record(reply_msg(xid, result)))
    return call, reply


def test_setvolume_v3_dicts_and_auth_failure():
    args = dict3({"process-uuid": b"client-1-PID:99\0", "remote-subvolume": b"/bricks/b1\0",
                  "volfile-key": b"vol0\0"})
    result = (Packer().int32(-1).int32(13)
              .raw(dict3({"ERROR": b"Authentication failed\0", "process-uuid": b"srv\0"})).bytes())
    call, reply = exchange(HNDSK, 2, 1, args, result)
    assert (call["program"], call["procedure"]) == ("GlusterFS Handshake", "SETVOLUME")
    assert call["args"]["dict"]["remote-subvolume"] == "/bricks/b1"
    assert (reply["op_ret"], reply["op_errno"], reply["errno_name"]) == (-1, 13, "EACCES")
    assert reply["result"]["dict"]["ERROR"] == "Authentication failed"


def test_setvolume_gfx_dict():
    args = gfx_dict([("remote-subvolume", dicts.GF_DATA_TYPE_STR, b"/bricks/b1\0"),
                     ("clnt-lk-version", dicts.GF_DATA_TYPE_INT, 1)])
    result = Packer().int32(0).int32(0).raw(gfx_dict([("ERROR", dicts.GF_DATA_TYPE_STR, b"Success\0")])).bytes()
    call, reply = exchange(HNDSK, 2, 1, args, result)
    assert call["args"]["dict"] == {"remote-subvolume": "/bricks/b1", "clnt-lk-version": 1}
    assert reply["result"]["dict"] == {"ERROR": "Success"}


def test_getspec_keeps_size_and_prefix_only():
    volfile = ("volume vol0-client-0\n    type protocol/client\n" * 200).encode()
    args = Packer().uint32(0).string("vol0").raw(dict3({})).bytes()
    result = Packer().int32(len(volfile)).int32(0).opaque(volfile).raw(dict3({})).bytes()
    call, reply = exchange(HNDSK, 2, 2, args, result)
    assert call["args"]["key"] == "vol0"
    r = reply["result"]
    assert r["spec_size"] == len(volfile)
    assert r["spec_prefix"].startswith("volume vol0-client-0\n") and len(r["spec_prefix"]) <= 120
    assert reply["op_ret"] == len(volfile)


def test_portbybrick():
    call, reply = exchange(PMAP, 1, 1, Packer().string("/bricks/b1").bytes(),
                           Packer().int32(0).int32(0).int32(0).int32(49152).bytes())
    assert (call["program"], call["procedure"]) == ("Gluster Portmap", "PORTBYBRICK")
    assert call["args"] == {"brick": "/bricks/b1"}
    assert reply["result"] == {"status": 0, "port": 49152} and reply["op_ret"] == 0


def test_dump_lists_programs():
    progs = [("GlusterFS 4.x v1", 1298437, 400), ("GF-DUMP", 123451501, 1),
             ("GlusterFS Handshake", 14398633, 2)]
    body = Packer().uint64(0).int32(0).int32(0)
    for name, num, ver in progs:
        body.bool(True).string(name).uint64(num).uint64(ver)
    body.bool(False)
    call, reply = exchange(DUMP, 1, 1, Packer().uint64(0).bytes(), body.bytes())
    assert call["procedure"] == "DUMP" and call["args"] == {"gfs_id": 0}
    assert reply["result"]["prog"] == [{"progname": n, "prognum": p, "progver": v} for n, p, v in progs]


def test_registry_numbers():
    expect = {1298437: "GlusterFS", 14398633: "GlusterFS Handshake", 34123456: "Gluster Portmap",
              123451501: "GF-DUMP", 52743234: "GlusterFS Callback", 1238433: "GlusterD svc mgmt",
              1238437: "GlusterD svc peer", 1238463: "GlusterD svc cli"}
    for num, name in expect.items():
        assert programs.REGISTRY[num].name == name
    assert programs.lookup(1238433, 3, 1).procedure == "LOCK"
    assert programs.lookup(1238463, 2, 5).procedure == "GET_VOLUME"
    assert programs.lookup(1238437, 2, 2).procedure == "FRIEND_ADD"
    assert programs.lookup(14398633, 2, 1).procedure == "SETVOLUME"
    assert programs.lookup(34123456, 1, 4).procedure == "SIGNIN"
    assert programs.lookup(52743234, 1, 5).procedure == "CACHE_INVALIDATION"
    assert programs.lookup(1, 1, 1).program is None


def test_getspec_keeps_the_replica_sets():
    volfile = ("volume v-client-0\n type protocol/client\n option remote-host h\n"
               " option remote-subvolume /b1\nend-volume\n"
               "volume v-replicate-0\n type cluster/replicate\n subvolumes v-client-0\nend-volume\n").encode()
    args = Packer().uint32(0).string("v").raw(dict3({})).bytes()
    result = Packer().int32(len(volfile)).int32(0).opaque(volfile).raw(dict3({})).bytes()
    _call, reply = exchange(HNDSK, 2, 2, args, result)
    assert reply["result"]["brick_sets"] == [{"name": "v-replicate-0", "type": "replicate",
                                              "bricks": [["h", "/b1"]]}]


def test_a_volfile_seen_again_gives_the_same_result_in_lists_of_its_own():
    """Every client fetches the same volfile: its parse is reused, and each reply still owns
    its lists (a consumer changing one changes no other event); the memo stays bounded."""
    from correlate.gluster import handshake
    volfile = ("volume v-client-0\n type protocol/client\n option remote-host h\n"
               " option remote-subvolume /b1\n option ping-timeout 7\nend-volume\n"
               "volume v-replicate-0\n type cluster/replicate\n subvolumes v-client-0\n"
               "end-volume\n").encode()
    args = Packer().uint32(0).string("v").raw(dict3({})).bytes()
    result = Packer().int32(len(volfile)).int32(0).opaque(volfile).raw(dict3({})).bytes()
    first = exchange(HNDSK, 2, 2, args, result)[1]["result"]
    first["brick_sets"][0]["bricks"].append(["changed", "/by a consumer"])
    first["bricks"].clear()
    again = exchange(HNDSK, 2, 2, args, result)[1]["result"]
    assert again["brick_sets"] == [{"name": "v-replicate-0", "type": "replicate",
                                    "bricks": [["h", "/b1"]]}]
    assert again["bricks"] == [["h", "/b1"]] and again["ping_timeout"] == "7"
    assert bytes(volfile) in handshake._PARSED
    for n in range(handshake.MAX_PARSED + 5):           # many other volfiles
        other = volfile.replace(b"/b1", f"/b{n}x".encode())
        res = Packer().int32(len(other)).int32(0).opaque(other).raw(dict3({})).bytes()
        assert exchange(HNDSK, 2, 2, args, res)[1]["result"]["bricks"] == [["h", f"/b{n}x"]]
    assert len(handshake._PARSED) <= handshake.MAX_PARSED
    huge = volfile + b"#" * handshake.MAX_PARSED_SPEC
    res = Packer().int32(len(huge)).int32(0).opaque(huge).raw(dict3({})).bytes()
    assert exchange(HNDSK, 2, 2, args, res)[1]["result"]["bricks"] == [["h", "/b1"]]
    assert huge not in handshake._PARSED
