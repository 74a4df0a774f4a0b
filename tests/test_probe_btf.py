"""The BTF reader: the real kernel's, and damaged or crafted blobs."""
from __future__ import annotations

import os
import struct

import pytest

from correlate.probe.btf import BtfError, member_offset

VMLINUX = "/sys/kernel/btf/vmlinux"


def _btf(types: bytes, strings: bytes) -> bytes:
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def _struct(name_off: int, size: int, members: list[tuple[int, int, int]], kind_flag=0) -> bytes:
    info = (kind_flag << 31) | (4 << 24) | len(members)
    return struct.pack("<III", name_off, info, size) + b"".join(struct.pack("<III", *m) for m in members)


STRINGS = b"\0outer\0inner\0field\0leaf\0"   # offsets: outer 1, inner 7, field 13, leaf 19
INT = struct.pack("<III", 0, 1 << 24, 8) + struct.pack("<I", 64)         # type 1: an int


def _nested(tmp_path, kind_flag=0) -> str:
    inner = _struct(7, 16, [(19, 1, 64)], kind_flag)                        # type 2: leaf at byte 8
    outer = _struct(1, 64, [(13, 2, 256)], kind_flag)                       # type 3: field at byte 32
    path = tmp_path / f"btf{kind_flag}"
    path.write_bytes(_btf(INT + inner + outer, STRINGS))
    return str(path)


def test_nested_member_offsets_add_up(tmp_path):
    assert member_offset("outer", "field", "leaf", path=_nested(tmp_path)) == 40
    assert member_offset("outer", "field", "leaf", path=_nested(tmp_path, kind_flag=1)) == 40


def test_missing_struct_and_member_are_named(tmp_path):
    path = _nested(tmp_path)
    with pytest.raises(BtfError, match="no struct nowhere"):
        member_offset("nowhere", "x", path=path)
    with pytest.raises(BtfError, match="no member field.nope"):
        member_offset("outer", "field", "nope", path=path)
    with pytest.raises(BtfError, match="leaf is not a struct"):
        member_offset("inner", "leaf", "deeper", path=path)


def test_damaged_blobs_give_btf_error(tmp_path):
    good = open(_nested(tmp_path), "rb").read()
    for i, blob in enumerate([b"", b"\x00" * 30, good[:30], good[:-10],
                              good[:24] + b"\xff" * (len(good) - 24)]):
        path = tmp_path / f"bad{i}"
        path.write_bytes(blob)
        with pytest.raises(BtfError):
            member_offset("outer", "field", "leaf", path=str(path))
    with pytest.raises(BtfError, match="cannot read"):
        member_offset("outer", "field", path=str(tmp_path / "absent"))


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason=f"{VMLINUX} absent (kernel without BTF)")
def test_running_kernel_has_the_thread_pointer():
    thread = member_offset("task_struct", "thread")
    fsbase = member_offset("task_struct", "thread", "fsbase")
    assert 0 < thread < fsbase < thread + 512


def test_members_of_anonymous_structs_and_unions_are_found(tmp_path):
    """sock_common's skc_daddr lies in an anonymous struct inside an anonymous union."""
    union = struct.pack("<III", 0, (5 << 24) | 1, 16) + struct.pack("<III", 0, 3, 0)  # type 4
    anon = _struct(0, 16, [(19, 1, 64)])                                      # type 3: leaf at 8
    outer = _struct(1, 64, [(13, 1, 0), (0, 4, 128)])                         # type 5: union at 16
    path = tmp_path / "anon"
    path.write_bytes(_btf(INT + _struct(7, 8, []) + anon + union + outer, STRINGS))  # inner: type 2
    assert member_offset("outer", "leaf", path=str(path)) == 24
    with pytest.raises(BtfError, match="no member nope"):
        member_offset("outer", "nope", path=str(path))


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason=f"{VMLINUX} absent (kernel without BTF)")
def test_running_kernel_socket_addresses():
    """The ends of a socket as the tls probe reads them: the IPv4 address pair, then the
    port pair, then the family (include/net/sock.h)."""
    daddr, saddr = member_offset("sock_common", "skc_daddr"), member_offset("sock_common", "skc_rcv_saddr")
    dport, num = member_offset("sock_common", "skc_dport"), member_offset("sock_common", "skc_num")
    assert saddr == daddr + 4 and num == dport + 2 < member_offset("sock_common", "skc_family")
