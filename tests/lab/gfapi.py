"""A libgfapi client through ctypes: the real library, nothing compiled.

As a module:

    from tests.lab import gfapi
    with gfapi.Client(log_file="/tmp/c.log") as fs:
        fs.create("/f")
        fs.utimens("/f", atime=(-1, 0), mtime=(1700000000, 0))
        print(fs.stat("/f"))

As a command, each run printing one JSON object on stdout:

    python -m tests.lab.gfapi utimens --path /f --atime -1 --mtime 1700000000
    python -m tests.lab.gfapi init --timeout 10          # {"status": "hung", ...} if it hangs

`run([...], timeout=N)` runs the command in a child process and kills it after N seconds,
because `glfs_init` never returns when the bricks reject the client or a firewall drops it.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .gfapi_fops import MoreFops, Stat, stat_of
from .gfapi_types import SIGNATURES, StatStruct, Timespec

VOLUME = "labvol"
SERVER = "127.0.0.2"
PORT = 24007
DEFAULT_LOG = "/var/log/correlate-lab/gfapi.log"
LOG_LEVEL_TRACE = 9  # GF_LOG_TRACE; 7 is INFO, 8 DEBUG
LOG_LEVEL_INFO = 7
REPO_ROOT = Path(__file__).resolve().parents[2]


class GfapiError(OSError):
    """A libgfapi call failed; errno and the call's name are kept."""


def load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("gfapi") or "libgfapi.so.0"
    lib = ctypes.CDLL(name, use_errno=True)
    for fname, (argtypes, restype) in SIGNATURES.items():
        func = getattr(lib, fname)
        func.argtypes, func.restype = argtypes, restype
    return lib


def _times(atime: tuple[int, int], mtime: tuple[int, int]):
    # struct timespec times[2]: [0] is atime, [1] is mtime, exactly as utimensat(2).
    return (Timespec * 2)(Timespec(*atime), Timespec(*mtime))


class Client(MoreFops):
    """One mounted volume (a `glfs_t`). Paths are volume paths such as "/dir/file";
    the less common fops are in gfapi_fops.MoreFops."""

    def __init__(self, volume: str = VOLUME, server: str = SERVER, port: int = PORT,
                 log_file: str | None = DEFAULT_LOG, log_level: int = LOG_LEVEL_INFO,
                 xlator_options: dict[str, str] | None = None):
        self.lib = load_library()
        self.volume = volume
        self.fs = self.lib.glfs_new(volume.encode())
        if not self.fs:
            self._fail("glfs_new")
        self._check("glfs_set_volfile_server",
                    self.lib.glfs_set_volfile_server(self.fs, b"tcp", server.encode(), port))
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        self._check("glfs_set_logging", self.lib.glfs_set_logging(
            self.fs, log_file.encode() if log_file else None, log_level))
        # Keys are "xlator-pattern:option", e.g. "*-client-*:client-bind-insecure" -> "on".
        for key, value in (xlator_options or {}).items():
            xlator, option = key.split(":", 1)
            self._check("glfs_set_xlator_option", self.lib.glfs_set_xlator_option(
                self.fs, xlator.encode(), option.encode(), value.encode()))

    def _fail(self, call: str):
        err = ctypes.get_errno()
        raise GfapiError(err, f"{call}: {os.strerror(err)}")

    def _check(self, call: str, ret: int) -> int:
        if ret < 0:
            self._fail(call)
        return ret

    def init(self) -> "Client":
        """Connect and fetch the volume file (blocks while the bricks refuse the client)."""
        self._check("glfs_init", self.lib.glfs_init(self.fs))
        return self

    def fini(self) -> None:
        if self.fs:
            self.lib.glfs_fini(self.fs)
            self.fs = None

    def __enter__(self) -> "Client":
        return self.init()

    def __exit__(self, *exc) -> None:
        self.fini()

    # file operations -------------------------------------------------------------------
    def creat(self, path: str, mode: int = 0o644, flags: int = os.O_RDWR | os.O_CREAT):
        fd = self.lib.glfs_creat(self.fs, path.encode(), flags, mode)
        if not fd:
            self._fail("glfs_creat")
        return fd

    def open(self, path: str, flags: int = os.O_RDONLY):
        fd = self.lib.glfs_open(self.fs, path.encode(), flags)
        if not fd:
            self._fail("glfs_open")
        return fd

    def close(self, fd) -> None:
        self._check("glfs_close", self.lib.glfs_close(fd))

    def create(self, path: str, data: bytes = b"") -> None:
        """Create (or truncate) a file, write `data`, close it."""
        fd = self.creat(path, flags=os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            if data:
                self.write(fd, data)
        finally:
            self.close(fd)

    def write(self, fd, data: bytes) -> int:
        return self._check("glfs_write", self.lib.glfs_write(fd, data, len(data), 0))

    def read(self, fd, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = self._check("glfs_read", self.lib.glfs_read(fd, buf, size, 0))
        return buf.raw[:n]

    def utimens(self, path: str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        """glfs_utimens with arbitrary signed (tv_sec, tv_nsec) pairs, passed through as-is."""
        self._check("glfs_utimens",
                    self.lib.glfs_utimens(self.fs, path.encode(), _times(atime, mtime)))

    def futimens(self, fd, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        self._check("glfs_futimens", self.lib.glfs_futimens(fd, _times(atime, mtime)))

    def stat(self, path: str) -> Stat:
        st = StatStruct()
        self._check("glfs_stat", self.lib.glfs_stat(self.fs, path.encode(), ctypes.byref(st)))
        return stat_of(st)

    def unlink(self, path: str) -> None:
        self._check("glfs_unlink", self.lib.glfs_unlink(self.fs, path.encode()))

    def mkdir(self, path: str, mode: int = 0o755, exist_ok: bool = False) -> None:
        if self.lib.glfs_mkdir(self.fs, path.encode(), mode) < 0:
            if not (exist_ok and ctypes.get_errno() == errno.EEXIST):
                self._fail("glfs_mkdir")


# command line -------------------------------------------------------------------------------

def run(args: list[str], timeout: float = 30.0) -> dict:
    """Run `python -m tests.lab.gfapi ARGS` in a child process; kill it after `timeout` s.

    Returns the child's JSON result, or {"status": "hung", ...} when it had to be killed.
    Always returns the child's pid (for probes that filter on it)."""
    cmd = [sys.executable, "-m", "tests.lab.gfapi", *args, "--timeout", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"status": "hung", "timeout_s": timeout, "pid": proc.pid, "stderr": err[-2000:]}
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"status": "error", "error": f"no result (exit {proc.returncode})"}
    result.setdefault("pid", proc.pid)
    result["exit_code"] = proc.returncode
    if err.strip():
        result["stderr"] = err[-2000:]
    return result


def _parse_time(value: str) -> tuple[int, int]:
    """"-1", "1700000000" or "1700000000.5" (seconds[.fraction]) -> (tv_sec, tv_nsec)."""
    if "." in value:
        sec, frac = value.split(".", 1)
        return int(sec), int((frac + "000000000")[:9])
    return int(value), 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--volume", default=VOLUME)
    common.add_argument("--server", default=SERVER)
    common.add_argument("--port", type=int, default=PORT)
    common.add_argument("--log", default=DEFAULT_LOG, help="gfapi log file (default %(default)s)")
    common.add_argument("--log-level", type=int, default=LOG_LEVEL_INFO,
                        help="7 INFO, 8 DEBUG, 9 TRACE")
    common.add_argument("--xlator-option", action="append", default=[], metavar="XL:OPT=VAL",
                        help='e.g. "*-client-*:client-bind-insecure=on"')
    common.add_argument("--fini", action="store_true",
                        help="call glfs_fini at the end (it takes about 10 s; by default the "
                             "process just exits and the kernel closes the connections)")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="run in a child and report 'hung' after this many seconds "
                             "(0: run in this process)")
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.gfapi", description="Drive the lab volume through libgfapi.",
        epilog="examples:\n"
               "  python -m tests.lab.gfapi utimens --path /f --atime -1 --mtime 1700000000\n"
               "  python -m tests.lab.gfapi futimens --path /f --atime 0.5 --mtime-nsec 1073741822\n"
               "  python -m tests.lab.gfapi init --timeout 10\n"
               "  python -m tests.lab.gfapi fops --volume busyrep3 --dir /busy\n"
               "  python -m tests.lab.gfapi write-loop --volume hangvol --path /w --seconds 20",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="op", required=True)
    sub.add_parser("init", parents=[common], help="mount, then unmount")
    for name in ("utimens", "futimens"):
        p = sub.add_parser(name, parents=[common],
                           help=f"create PATH if missing, glfs_{name}, stat it back")
        p.add_argument("--path", required=True)
        p.add_argument("--atime", type=_parse_time, default=(0, 0), help="seconds[.fraction]")
        p.add_argument("--mtime", type=_parse_time, default=(0, 0), help="seconds[.fraction]")
        p.add_argument("--atime-nsec", type=int, help="raw tv_nsec (e.g. UTIME_OMIT 1073741822)")
        p.add_argument("--mtime-nsec", type=int, help="raw tv_nsec")
        p.add_argument("--unlink", action="store_true", help="remove PATH at the end")
    sub.choices["utimens"].add_argument("--existing", action="store_true",
                                        help="do not create PATH (a missing one: ENOENT)")
    p = sub.add_parser("workload", parents=[common],
                       help="small files: create+write, stat, utimens, read, unlink each")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", type=int, default=4096, help="bytes written to each file")
    p.add_argument("--dir", default="/workload")
    p = sub.add_parser("fops", parents=[common], help="every gfapi call once under --dir")
    p.add_argument("--dir", default="/busy")
    p = sub.add_parser("write-loop", parents=[common],
                       help="pwrite (and fsync) PATH for --seconds, noting failures and stalls")
    p.add_argument("--path", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--stop-after-errors", type=int, default=0)
    p.add_argument("--existing", action="store_true", help="open PATH as it is (no create)")
    sub.add_parser("statvfs", parents=[common], help="glfs_statvfs of / (a STATFS per brick)")
    for name, text in (("create", "create (truncate) a file"), ("stat", "stat a file"),
                       ("unlink", "remove a file"), ("mkdir", "make a directory")):
        sub.add_parser(name, parents=[common], help=text).add_argument("--path", required=True)
    return parser


def _execute(opts) -> dict:
    xlator_options = {}
    for item in opts.xlator_option:
        key, _, value = item.partition("=")
        xlator_options[key] = value
    fs = Client(opts.volume, opts.server, opts.port, opts.log, opts.log_level, xlator_options)
    fs.init()
    result = _operation(fs, opts)
    if opts.fini:
        fs.fini()
    return result


def _operation(fs: Client, opts) -> dict:
    if opts.op == "init":
        return {}
    if opts.op == "create":
        fs.create(opts.path)
        return {}
    if opts.op == "unlink":
        fs.unlink(opts.path)
        return {}
    if opts.op == "mkdir":
        fs.mkdir(opts.path)
        return {}
    if opts.op == "statvfs":
        return {"statvfs": fs.statvfs("/")}
    if opts.op == "stat":
        return {"stat": asdict(fs.stat(opts.path))}
    if opts.op == "workload":
        return workload(fs, opts.files, opts.size, opts.dir)
    if opts.op in ("fops", "write-loop"):
        from . import workloads  # it imports this module
        if opts.op == "fops":
            return workloads.every_fop(fs, opts.dir)
        return workloads.write_loop(fs, opts.path, opts.seconds, opts.size, opts.interval,
                                    opts.stop_after_errors, opts.existing)
    atime = (opts.atime[0], opts.atime[1] if opts.atime_nsec is None else opts.atime_nsec)
    mtime = (opts.mtime[0], opts.mtime[1] if opts.mtime_nsec is None else opts.mtime_nsec)
    if not getattr(opts, "existing", False):
        fd = fs.creat(opts.path)
        try:
            if opts.op == "futimens":
                fs.futimens(fd, atime, mtime)
        finally:
            fs.close(fd)
    if opts.op == "utimens":
        fs.utimens(opts.path, atime, mtime)
    result = {"atime": list(atime), "mtime": list(mtime), "stat": asdict(fs.stat(opts.path))}
    if opts.unlink:
        fs.unlink(opts.path)
    return result


def workload(fs: Client, files: int, size: int, directory: str = "/workload") -> dict:
    """Many small files through every common fop: CREATE, WRITE, STAT, SETATTR, OPEN, READ,
    UNLINK (plus the LOOKUPs, FLUSHes and RELEASEs they bring)."""
    fs.mkdir(directory, exist_ok=True)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for i in range(files):
        path = f"{directory}/f{i:06d}"
        fs.create(path, data)
        fs.stat(path)
        fs.utimens(path, (1700000000 + i, 0), (1700000000 + i, 500))
        fd = fs.open(path)
        try:
            if fs.read(fd, size) != data:
                raise GfapiError(5, f"{path}: read back different bytes")
        finally:
            fs.close(fd)
        fs.unlink(path)
    return {"files": files, "size": size}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = _parser().parse_args(argv)
    if opts.timeout > 0:
        result = run([a for a in argv], timeout=opts.timeout)
    else:
        try:
            result = {"status": "ok", "op": opts.op, **_execute(opts)}
        except GfapiError as exc:
            result = {"status": "error", "op": opts.op, "errno": exc.errno, "error": str(exc)}
        result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    exit_code = main()
    # Without --fini the volume is still mounted and libgfapi's threads run: leave at once,
    # without glfs_fini's long wait or interpreter shutdown racing those threads.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
