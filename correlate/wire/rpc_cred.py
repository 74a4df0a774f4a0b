"""ONC RPC credentials: the flavors Gluster sends (AUTH_GLUSTERFS v1/v2/v3, AUTH_UNIX) decoded
into dicts, a damaged body kept as hex with the reason."""
from __future__ import annotations

import struct
from typing import Any

from ..errors import DecodeError
from ..xdr import Unpacker
from .rpc_header import (AUTH_GLUSTERFS, AUTH_GLUSTERFS_V2, AUTH_GLUSTERFS_V3, AUTH_NULL,
                         AUTH_UNIX, FLAVORS)
def _lk_owner(u: Unpacker) -> str:
    return u.opaque("lk_owner", 1024).hex()


def _groups(u: Unpacker, cap: int = 65536) -> list[int]:
    return u.array(lambda x: x.uint32("gid"), "groups", cap)


_CRED_V3 = struct.Struct(">iIIIIQI")    # pid uid gid flags ctime_nsec ctime_sec, groups count
_CRED_V2 = struct.Struct(">iIII")       # pid uid gid, groups count
_WORD = struct.Struct(">I")


def decode_cred(flavor: int, body: bytes) -> dict:
    """The credential as a dict: `flavor` (name) and, for the known flavors, its fields.
    A body that does not decode keeps the raw bytes (hex) and says why."""
    if flavor == AUTH_GLUSTERFS_V3 or flavor == AUTH_GLUSTERFS_V2:
        cred = _gluster_cred(flavor, body)
        if cred is not None:
            return cred
    return _decode_cred_slowly(flavor, body)


def _gluster_cred(flavor: int, body: bytes) -> dict | None:
    """A well-formed v2/v3 Gluster credential with a few Structs; None for anything else."""
    v3 = flavor == AUTH_GLUSTERFS_V3
    head = _CRED_V3 if v3 else _CRED_V2
    if len(body) < head.size:
        return None
    fields = head.unpack_from(body)
    ngroups = fields[-1]
    at = head.size + 4 * ngroups
    if ngroups > 65536 or at + 4 > len(body):
        return None
    groups = list(struct.unpack_from(f">{ngroups}I", body, head.size)) if ngroups else []
    owner_len = _WORD.unpack_from(body, at)[0]
    if owner_len > 1024 or at + 4 + owner_len + (-owner_len & 3) > len(body):
        return None
    lk_owner = body[at + 4:at + 4 + owner_len].hex()
    if v3:
        pid, uid, gid, flags, ctime_nsec, ctime_sec, _ = fields
        return {"flavor": "AUTH_GLUSTERFS_v3", "pid": pid, "uid": uid, "gid": gid, "flags": flags,
                "ctime_nsec": ctime_nsec, "ctime_sec": ctime_sec, "groups": groups,
                "lk_owner": lk_owner}
    pid, uid, gid, _ = fields
    return {"flavor": "AUTH_GLUSTERFS_v2", "pid": pid, "uid": uid, "gid": gid, "groups": groups,
            "lk_owner": lk_owner}


def _decode_cred_slowly(flavor: int, body: bytes) -> dict:
    cred: dict[str, Any] = {"flavor": FLAVORS.get(flavor, flavor)}
    u = Unpacker(body)
    try:
        if flavor == AUTH_NULL:
            pass
        elif flavor == AUTH_UNIX:
            cred.update(stamp=u.uint32("stamp"), machinename=u.string("machinename", 255),
                        uid=u.uint32("uid"), gid=u.uint32("gid"), groups=_groups(u, 16))
        elif flavor == AUTH_GLUSTERFS_V2:
            # rpc-common-xdr.x auth_glusterfs_parms_v2
            cred.update(pid=u.int32("pid"), uid=u.uint32("uid"), gid=u.uint32("gid"),
                        groups=_groups(u), lk_owner=_lk_owner(u))
        elif flavor == AUTH_GLUSTERFS_V3:
            # glusterfs4-xdr.x auth_glusterfs_params_v3
            cred.update(pid=u.int32("pid"), uid=u.uint32("uid"), gid=u.uint32("gid"),
                        flags=u.uint32("flags"), ctime_nsec=u.uint32("ctime_nsec"),
                        ctime_sec=u.uint64("ctime_sec"), groups=_groups(u), lk_owner=_lk_owner(u))
        elif flavor == AUTH_GLUSTERFS and len(body) == 88:
            # rpc-common-xdr.x auth_glusterfs_parms (v1): fixed 16 groups
            lk_owner = u.uint64("lk_owner")
            pid, uid, gid, ngrps = (u.uint32(n) for n in ("pid", "uid", "gid", "ngrps"))
            groups = [u.uint32("group") for _ in range(16)][:min(ngrps, 16)]
            cred.update(pid=pid, uid=uid, gid=gid, groups=groups, lk_owner=f"{lk_owner:016x}")
        elif body:
            cred["body"] = body.hex()
    except DecodeError as exc:
        cred["error"] = str(exc)
        cred["body"] = body.hex()
    return cred
