"""A loopback smbd exporting the lab volume through Samba's vfs_glusterfs module.

    from tests.lab import samba
    with samba.Smbd() as smbd:                 # 127.0.0.1:4450 (or a free port), share "gv"
        smbd.client("put /etc/hostname f.txt")
        smbd.utimes("f.txt", access="2001:02:03-04:05:06")

    python -m tests.lab.samba up        # runs in the foreground until Ctrl-C

Everything (config, pid, lock, state, private and log directories) lives in its own temp
directory, so a system smbd on port 445 is never touched. smbd runs in the foreground and is
stopped by its pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .gfapi import SERVER, VOLUME

PORT = 4450        # preferred; when something else holds it, a free port is taken instead
ADDRESS = "127.0.0.1"
SHARE = "gv"


class SambaError(RuntimeError):
    pass


def config_text(root: Path, volume: str, volfile_server: str, port: int) -> str:
    dirs = {name: root / name for name in ("run", "lock", "state", "cache", "private", "log", "ncalrpc")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return f"""[global]
    server role = standalone server
    workgroup = CORRELATELAB
    netbios name = CORRELATELAB
    smb ports = {port}
    interfaces = {ADDRESS}
    bind interfaces only = yes
    disable netbios = yes
    pid directory = {dirs['run']}
    lock directory = {dirs['lock']}
    state directory = {dirs['state']}
    cache directory = {dirs['cache']}
    private dir = {dirs['private']}
    ncalrpc dir = {dirs['ncalrpc']}
    log file = {dirs['log']}/log.%m
    log level = 1
    map to guest = Bad User
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    rpc_server:default = disabled
    server services = -nbt

[{SHARE}]
    path = /
    vfs objects = glusterfs
    glusterfs:volume = {volume}
    glusterfs:volfile_server = {volfile_server}
    glusterfs:logfile = {dirs['log']}/glusterfs-{volume}.log
    glusterfs:loglevel = 7
    kernel share modes = no
    read only = no
    guest ok = yes
    force user = root
"""


class Smbd:
    def __init__(self, volume: str = VOLUME, volfile_server: str = SERVER, port: int | None = None,
                 start_timeout: float = 30.0):
        """`port` None: PORT if free, else any free port (another smbd may hold PORT)."""
        self.volume = volume
        self.volfile_server = volfile_server
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.root / "smb.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "Smbd":
        if shutil.which("smbd") is None:
            raise SambaError("smbd not found: apt-get install samba samba-vfs-modules")
        if _port_open(self.port):
            raise SambaError(f"port {self.port} on {ADDRESS} is already in use")
        self.root = Path(tempfile.mkdtemp(prefix="correlate-smbd-"))
        self.conf.write_text(config_text(self.root, self.volume, self.volfile_server, self.port))
        log = open(self.root / "smbd.out", "w")
        self.proc = subprocess.Popen(["smbd", "--foreground", "--no-process-group", "--debug-stdout",
                                      "-s", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     # smbd signals its whole process group when it exits:
                                     # give it its own, or it takes the caller down with it.
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = (self.root / "smbd.out").read_text(errors="replace")[-1500:]
                self.stop()
                raise SambaError(f"smbd did not start listening on {ADDRESS}:{self.port}: {out}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.root is not None and not os.environ.get("CORRELATE_KEEP_SMBD"):
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "Smbd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # driving it --------------------------------------------------------------------------
    def client(self, commands: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`smbclient -p PORT //127.0.0.1/gv -N -c COMMANDS` (anonymous, mapped to guest)."""
        env = dict(os.environ, TZ="UTC")   # smbclient reads utimes dates as local time
        return subprocess.run(["smbclient", "-p", str(self.port), f"//{ADDRESS}/{SHARE}", "-N",
                               "-c", commands], capture_output=True, text=True, timeout=timeout,
                              env=env)

    def utimes(self, name: str, create: str = "-1", access: str = "-1", write: str = "-1",
               change: str = "-1") -> subprocess.CompletedProcess:
        """smbclient's `utimes <file> <create> <access> <write> <change>`; each time is
        [YY]YY:MM:DD-HH:MM:SS (UTC here) or -1 for "leave unchanged"."""
        return self.client(f"utimes {name} {create} {access} {write} {change}")

    def smbd_pids(self) -> list[int]:
        """smbd forks a child per client connection; the vfs module runs in the child."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(self.conf).encode() in cmdline:
                pids.append(int(entry))
        return sorted(pids)


def free_port(preferred: int = PORT) -> int:
    """`preferred` when nothing listens on it, else a port the kernel says is free."""
    if not _port_open(preferred):
        return preferred
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((ADDRESS, port)) == 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["up"]:
        print("usage: python -m tests.lab.samba up   (serves //127.0.0.1/gv on port 4450, or a free "
              "port when 4450 is taken, until Ctrl-C)")
        return 2
    with Smbd() as smbd:
        print(f"smbd pid {smbd.pid} serving //{ADDRESS}/{SHARE} on port {smbd.port} ({smbd.root})", flush=True)
        try:
            smbd.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
