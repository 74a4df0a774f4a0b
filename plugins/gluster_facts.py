"""Facts about Gluster traffic that the built-in detectors share."""
import time

GLUSTERFS_PROGRAM = 1298437
UTIME_NOW = (1 << 30) - 1        # tv_nsec: "set to now", tv_sec ignored
UTIME_OMIT = (1 << 30) - 2       # tv_nsec: "leave unchanged", tv_sec ignored
GF_SET_ATTR_ATIME = 0x10         # `valid` bit of SETATTR/FSETATTR (glusterfs xlator.h)
GLUSTERD_PORTS = (24007, 24008)
BRICK_PORTS = range(49152, 61000)   # glusterd's default base-port..max-port

# Functions whose arguments carry the times a process asked for, outermost layer first.
SAMBA_TIME_FUNCTIONS = ("vfs_gluster_fntimes", "vfs_gluster_ntimes")
GFAPI_TIME_FUNCTIONS = ("glfs_utimens", "glfs_futimens", "glfs_lutimens",
                        "glfs_setattr", "glfs_fsetattr")


def time_is_minus_one(sec, nsec) -> bool:
    """A tv_sec of -1 that is meant as a time (not masked by UTIME_OMIT / UTIME_NOW)."""
    return sec == -1 and nsec not in (UTIME_OMIT, UTIME_NOW)


def is_rpc(ev: dict, kind: str, *procedures: str) -> bool:
    return ev.get("kind") == kind and (not procedures or ev.get("procedure") in procedures)


def _port_of(endpoint: str | None) -> int | None:
    if not endpoint or ":" not in endpoint:
        return None
    try:
        return int(endpoint.rsplit(":", 1)[1])
    except ValueError:
        return None


def _host_of(endpoint: str | None) -> str:
    return (endpoint or "").rsplit(":", 1)[0].strip("[]")


# Asked for the same few endpoints at nearly every event: answered from a bounded memo.
_PORTS: dict = {}
_HOSTS: dict = {}
MAX_MEMO = 4096


def _remember(table: dict, fn, endpoint):
    value = fn(endpoint)
    try:
        if len(table) >= MAX_MEMO:
            table.clear()
        table[endpoint] = value
    except TypeError:           # not hashable (an odd saved timeline): not remembered
        pass
    return value


def port_of(endpoint: str | None) -> int | None:
    try:
        return _PORTS[endpoint]
    except (KeyError, TypeError):
        return _remember(_PORTS, _port_of, endpoint)


def host_of(endpoint: str | None) -> str:
    try:
        return _HOSTS[endpoint]
    except (KeyError, TypeError):
        return _remember(_HOSTS, _host_of, endpoint)


def find_key(obj, key: str):
    """First value stored under `key` anywhere in nested dicts/lists (reply dicts vary)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


# Lock calls that wait by design until the lock is free (glusterfs.h glusterfs_lk_cmds_t:
# GF_LK_SETLKW 2, GF_LK_RESLK_LCKW 4; entrylk_cmd: ENTRYLK_LOCK 0, ENTRYLK_LOCK_NB 2).
GF_LK_BLOCKING_CMDS = (2, 4)
ENTRYLK_LOCK = 0


# The procedures is_blocking_lock reads the args of (their `cmd`).
LOCK_PROCEDURES = frozenset({"LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK"})


def is_blocking_lock(call: dict) -> bool:
    """LK with F_SETLKW, or a blocking INODELK/FINODELK/ENTRYLK/FENTRYLK: it may stay
    unanswered as long as another client holds the lock."""
    procedure = call.get("procedure")
    cmd = (call.get("args") or {}).get("cmd")
    if procedure in ("LK", "INODELK", "FINODELK"):
        return cmd in GF_LK_BLOCKING_CMDS
    if procedure in ("ENTRYLK", "FENTRYLK"):
        return cmd == ENTRYLK_LOCK
    return False


def clock(time_ns: int, ms: bool = False) -> str:
    """A finding's wall-clock time of day (UTC), to the millisecond with `ms`."""
    text = time.strftime("%H:%M:%S", time.gmtime(time_ns / 1e9))
    return text + f".{time_ns % 10**9 // 10**6:03d}" if ms else text
