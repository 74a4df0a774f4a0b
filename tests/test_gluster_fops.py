"""GlusterFS fop arguments and results (v400 gfx_* and v330 gfs3_*) through RpcSink."""
import uuid

import pytest

from correlate.xdr import Packer
from tests.test_gluster_dicts import dict3, gfx_dict
from tests.test_rpc import FOP, call_msg, cred_v3, new_sink, record, reply_msg

GFID = uuid.UUID("3a0f3d55-4a1b-4c8e-9d2e-0123456789ab")
PARGFID = uuid.UUID("00000000-0000-0000-0000-000000000001")
EMPTY_GFX = gfx_dict([])
EMPTY_V3 = dict3({})


def iattx(gfid=GFID, size=0, mode=0o100644, atime=0, atime_nsec=0, mtime=0, mtime_nsec=0,
          ctime=0, uid=0, gid=0) -> bytes:
    """gfx_iattx in wire order."""
    p = Packer().fopaque(gfid.bytes)
    for v in (0, 11, 2049, 0, size, 8, 0, 0):          # flags ino dev rdev size blocks attrs mask
        p.uint64(v)
    for v in (atime, mtime, ctime, 0):                  # signed seconds
        p.int64(v)
    for v in (atime_nsec, mtime_nsec, 0, 0, 1, uid, gid, 4096, mode):
        p.uint32(v)
    return p.bytes()


def gf_iatt(gfid=GFID, size=0, mode=0o100644, atime=0, atime_nsec=0, mtime=0, mtime_nsec=0) -> bytes:
    """gf_iatt (v3) in wire order."""
    p = Packer().fopaque(gfid.bytes).uint64(11).uint64(2049).uint32(mode).uint32(1).uint32(0)
    p.uint32(0).uint64(0).uint64(size).uint32(4096).uint64(8)
    for v in (atime, atime_nsec, mtime, mtime_nsec, 0, 0):
        p.uint32(v)
    return p.bytes()


def exchange(proc, args, result, vers=400, xid=0x55):
    sink, diag, conn = new_sink()
    [call] = sink.on_data(conn, True, 1_000, record(call_msg(xid, FOP, vers, proc, args, cred_v3())))
    [reply] = sink.on_data(conn, False, 2_000, record(reply_msg(xid, result)))
    return call, reply, diag


def setattr_args_v4(valid, atime, atime_nsec, mtime, mtime_nsec):
    return (Packer().fopaque(GFID.bytes)
            .raw(iattx(atime=atime, atime_nsec=atime_nsec, mtime=mtime, mtime_nsec=mtime_nsec))
            .int32(valid).raw(EMPTY_GFX).bytes())


def two_iatt_rsp_v4(op_ret=0, op_errno=0, **post):
    return (Packer().int32(op_ret).int32(op_errno).raw(EMPTY_GFX).raw(iattx()).raw(iattx(**post))
            .bytes())


def test_setattr_v4_atime_minus_one_stays_minus_one():
    args = setattr_args_v4(0x30, -1, 0, 1700000000, 123)
    call, reply, diag = exchange(38, args, two_iatt_rsp_v4(atime=-1, mtime=1700000000))
    assert call["procedure"] == "SETATTR" and call["version"] == 400
    a = call["args"]
    assert a["gfid"] == str(GFID)
    assert (a["atime"], a["atime_nsec"], a["mtime"], a["mtime_nsec"]) == (-1, 0, 1700000000, 123)
    assert a["valid"] == 0x30 and a["valid_flags"] == ["GF_SET_ATTR_ATIME", "GF_SET_ATTR_MTIME"]
    assert "decode_error" not in call
    assert reply["op_ret"] == 0 and reply["errno_name"] is None
    post = reply["result"]["poststat"]
    assert post["ia_atime"] == -1 and post["ia_gfid"] == str(GFID) and post["ia_type"] == "IA_IFREG"
    assert not diag.counts


def test_setattr_v4_now_flags_and_failure():
    args = setattr_args_v4(0x10 | 0x80, 0, 0, 0, 0)
    call, reply, _ = exchange(38, args, two_iatt_rsp_v4(op_ret=-1, op_errno=1))
    assert call["args"]["valid_flags"] == ["GF_SET_ATTR_ATIME", "GF_ATTR_ATIME_NOW"]
    assert (reply["op_ret"], reply["op_errno"], reply["errno_name"]) == (-1, 1, "EPERM")


def test_fsetattr_v4():
    args = (Packer().fopaque(GFID.bytes).int64(7).raw(iattx(atime=-1, mtime=5)).int32(0x30)
            .raw(EMPTY_GFX).bytes())
    call, reply, _ = exchange(39, args, two_iatt_rsp_v4())
    a = call["args"]
    assert call["procedure"] == "FSETATTR"
    assert (a["gfid"], a["fd"], a["atime"], a["mtime"]) == (str(GFID), 7, -1, 5)


def test_setattr_v3_times_are_unsigned_as_in_the_x_file():
    stbuf = gf_iatt(atime=0xFFFFFFFF, mtime=1700000000)
    args = Packer().fopaque(GFID.bytes).raw(stbuf).int32(0x30).raw(EMPTY_V3).bytes()
    rsp = Packer().int32(0).int32(0).raw(gf_iatt()).raw(gf_iatt(size=3)).raw(EMPTY_V3).bytes()
    call, reply, _ = exchange(38, args, rsp, vers=330)
    assert call["args"]["atime"] == 0xFFFFFFFF and call["args"]["valid"] == 0x30
    assert reply["result"]["statpost"]["ia_size"] == 3


def test_fsetattr_v3_has_no_gfid():
    args = Packer().int64(3).raw(gf_iatt(mtime=9)).int32(0x20).raw(EMPTY_V3).bytes()
    call, _, _ = exchange(39, args, Packer().int32(0).int32(0).raw(gf_iatt()).raw(gf_iatt())
                          .raw(EMPTY_V3).bytes(), vers=330)
    assert call["args"]["fd"] == 3 and call["args"]["mtime"] == 9 and "gfid" not in call["args"]


def test_truncated_setattr_args_keep_the_call_with_decode_error():
    args = setattr_args_v4(0x30, -1, 0, 0, 0)[:60]
    call, reply, _ = exchange(38, args, two_iatt_rsp_v4())
    assert call["procedure"] == "SETATTR" and call["args"] == {}
    assert "needs 8 bytes" in call["decode_error"] and "offset" in call["decode_error"]
    assert reply["procedure"] == "SETATTR"          # still matched


def test_truncated_result_keeps_the_reply_with_decode_error():
    call, reply, _ = exchange(38, setattr_args_v4(0x30, 1, 0, 1, 0), Packer().int32(0).bytes())
    assert reply["result"] == {} and "op_errno" in reply["decode_error"]


def test_lookup_v4():
    args = (Packer().fopaque(b"\0" * 16).fopaque(PARGFID.bytes).uint32(0).string("file.txt")
            .raw(gfx_dict([("gfid-req", 7, GFID.bytes)])).bytes())
    rsp = Packer().int32(-1).int32(2).raw(EMPTY_GFX).raw(iattx()).raw(iattx(mode=0o40755)).bytes()
    call, reply, _ = exchange(27, args, rsp)
    assert call["args"]["bname"] == "file.txt" and call["args"]["pargfid"] == str(PARGFID)
    assert call["args"]["xdata"] == {"gfid-req": str(GFID)}
    assert reply["errno_name"] == "ENOENT"
    assert reply["result"]["poststat"]["ia_type"] == "IA_IFDIR"


def test_create_v4():
    args = (Packer().fopaque(PARGFID.bytes).uint32(0o101).uint32(0o100644).uint32(0o22)
            .string("new").raw(EMPTY_GFX).bytes())
    rsp = (Packer().int32(0).int32(0).raw(EMPTY_GFX).raw(iattx(size=0)).uint64(1)
           .raw(iattx()).raw(iattx()).bytes())
    call, reply, _ = exchange(23, args, rsp)
    assert call["args"]["bname"] == "new" and call["args"]["mode"] == 0o100644
    assert reply["result"]["fd"] == 1 and reply["result"]["stat"]["ia_gfid"] == str(GFID)


def test_open_read_write_stat_unlink_statfs_v4():
    g = Packer().fopaque(GFID.bytes)
    open_call, open_reply, _ = exchange(11, g.bytes() + Packer().uint32(2).raw(EMPTY_GFX).bytes(),
                                        Packer().int32(0).int32(0).raw(EMPTY_GFX).int64(4).bytes())
    assert open_call["args"]["flags"] == 2 and open_reply["result"]["fd"] == 4

    rw = GFID.bytes + Packer().int64(4).uint64(8192).uint32(4096).uint32(0).raw(EMPTY_GFX).bytes()
    read_call, read_reply, _ = exchange(12, rw, Packer().int32(4096).int32(0).raw(iattx(size=9999))
                                        .uint32(4096).raw(EMPTY_GFX).raw(b"D" * 4096).bytes())
    assert (read_call["args"]["offset"], read_call["args"]["size"]) == (8192, 4096)
    assert read_reply["op_ret"] == 4096 and read_reply["result"]["stat"]["ia_size"] == 9999
    assert "D" * 10 not in str(read_reply)       # the payload is not carried

    write_call, _, _ = exchange(13, rw + b"P" * 4096, two_iatt_rsp_v4())
    assert write_call["args"]["size"] == 4096 and "P" * 10 not in str(write_call)

    _, stat_reply, _ = exchange(1, g.bytes() + EMPTY_GFX, Packer().int32(0).int32(0).raw(EMPTY_GFX)
                                .raw(iattx(size=42, mtime=-5)).bytes())
    assert stat_reply["result"]["stat"]["ia_size"] == 42
    assert stat_reply["result"]["stat"]["ia_mtime"] == -5

    unlink_call, unlink_reply, _ = exchange(
        5, Packer().fopaque(PARGFID.bytes).string("gone").uint32(0).raw(EMPTY_GFX).bytes(),
        two_iatt_rsp_v4(op_ret=-1, op_errno=13))
    assert unlink_call["args"]["bname"] == "gone" and unlink_reply["errno_name"] == "EACCES"

    statfs = Packer().int32(0).int32(0).raw(EMPTY_GFX)
    for v in (4096, 4096, 1000, 500, 400, 100, 50, 50, 7, 0, 255):
        statfs.uint64(v)
    statfs_call, statfs_reply, _ = exchange(14, g.bytes() + EMPTY_GFX, statfs.bytes())
    assert statfs_call["procedure"] == "STATFS"
    assert statfs_reply["result"]["statfs"]["bfree"] == 500
    assert statfs_reply["result"]["statfs"]["namemax"] == 255


def test_v3_lookup_and_stat():
    args = (Packer().fopaque(b"\0" * 16).fopaque(PARGFID.bytes).uint32(0).string("f")
            .raw(dict3({"gfid-req": GFID.bytes})).bytes())
    rsp = Packer().int32(0).int32(0).raw(gf_iatt(size=5)).raw(gf_iatt()).raw(EMPTY_V3).bytes()
    call, reply, _ = exchange(27, args, rsp, vers=330)
    assert call["args"]["bname"] == "f" and call["args"]["xdata"]["gfid-req"].startswith("0x")
    assert reply["result"]["stat"]["ia_size"] == 5


@pytest.mark.parametrize("proc,name", [(0, "NULL"), (15, "FLUSH"), (41, "RELEASE"), (53, "ICREATE"),
                                       (54, "NAMELINK"), (55, "PUT"), (56, "COPY_FILE_RANGE")])
def test_procedure_numbers(proc, name):
    sink, _, conn = new_sink()
    [ev] = sink.on_data(conn, True, 1, record(call_msg(1, FOP, 400, proc)))
    assert ev["procedure"] == name


def test_reply_of_a_procedure_without_layout_still_gives_op_ret():
    call, reply, _ = exchange(49, b"", Packer().int32(-1).int32(95).bytes())   # COMPOUND
    assert reply["procedure"] == "COMPOUND" and reply["errno_name"] == "ENOTSUP"


def _read_both(lay, data):
    """(result or error text, bytes consumed) of the field-by-field and the compiled reader."""
    from correlate.errors import DecodeError
    from correlate.gluster.layout import decode, struct
    from correlate.xdr import Unpacker
    out = []
    for read in (lambda u: decode(u, lay), struct(lay)):
        u = Unpacker(data, 0, base=40)
        try:
            out.append((read(u), u.pos))
        except DecodeError as exc:
            out.append((f"DecodeError: {exc}", None))
    return out


def _all_layouts():
    from correlate.gluster import fops
    for vers, table in (("v3", fops.V3), ("v4", fops.V4)):
        for pname, (req, rsp) in table.items():
            for side, lay in (("args", req), ("result", rsp)):
                if lay:
                    yield pytest.param(lay, id=f"{vers}-{pname}-{side}")


@pytest.mark.parametrize("lay", list(_all_layouts()))
def test_compiled_layout_reads_like_field_by_field(lay):
    """Same dict, same bytes consumed, and on every truncation the same error message."""
    import random
    rng = random.Random(len(lay))
    filled = bytes(rng.choice((0, 0, 0, 1, 0xFF)) for _ in range(600))
    for data in (bytes(600), filled):
        whole = _read_both(lay, data)
        assert whole[0] == whole[1]
        end = whole[0][1] or 600
        for cut in range(0, end, 3):
            slow, fast = _read_both(lay, data[:cut])
            assert slow == fast, cut



def test_layout_readers_are_planned_not_generated():
    """Every struct reader of the programs is the one (compiled) loop over a plan: no code
    made at import, which the compiled build could not compile."""
    from correlate.gluster import fops, layout
    from correlate.gluster.layout_read import StructReader
    assert layout._compiled, "no struct readers were made"
    for _lay, reader in layout._compiled.values():
        assert type(reader) is StructReader
    assert fops.FOP_PROGRAM.versions
