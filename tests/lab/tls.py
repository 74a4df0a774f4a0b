"""TLS volumes on the lab: a lab CA, node and client certificates, and clients that use
other certificates than the node's (CA mismatch, CN not allowed, expired).

    from tests.lab import tls
    pki = tls.up()                        # /usr/lib/ssl/glusterfs.{pem,key,ca}; down() restores
    tls.ensure_volume("tlsvol")           # client.ssl, server.ssl, auth.ssl-allow
    tls.gfapi(["workload", "--volume", "tlsvol", "--files", "5"])
    tls.gfapi([...], identity=pki.intruder)    # a client presenting CN "intruder"
    tls.gfapi([...], tls12=True)               # capped at TLS 1.2: certificates in clear

    python -m tests.lab.tls up|down       # install certificates + tlsvol / remove them all

Gluster 10.3 on Debian reads its certificates from /usr/lib/ssl/glusterfs.* in every
process that has ssl on (client and brick alike), so a client that must present other
ones runs in its own mount namespace with those three paths bound to other files. Volumes
without ssl never open the files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import gfapi as gfapi_mod
from . import volumes

SSL_DIR = Path("/usr/lib/ssl")
NAMES = ("glusterfs.pem", "glusterfs.key", "glusterfs.ca")
NODE_CN = "correlate-lab-node"
STATE_DIR = Path("/var/lib/correlate-lab/tls")      # the installed lab PKI, for `down`
PYTHON = sys.executable
SECURE_ACCESS = Path("/var/lib/glusterd/secure-access")    # management encryption's switch


@dataclass(frozen=True)
class Identity:
    """What a process presents and trusts: its certificate, key and CA file."""
    pem: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Pki:
    node: Identity          # installed in /usr/lib/ssl: bricks and ordinary clients
    intruder: Identity      # same CA, CN "intruder" (not in auth.ssl-allow)
    foreign: Identity       # a certificate and CA of another, unrelated CA
    expired: Identity       # same CA, CN of the node, validity ended in 2020


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
             str(crt), "-days", "3650", "-subj", f"/CN={name}")
    return key, crt


def _leaf(d: Path, cn: str, ca_key: Path, ca_crt: Path, ca_file: Path,
          dates: tuple[str, str] | None = None) -> Identity:
    key, csr, crt = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.pem"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={cn}")
    if dates is None:
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(crt), "-days", "825")
    else:   # `openssl x509` cannot backdate; `openssl ca` can
        db = d / f"{cn}.db"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        (db / "serial").write_text("1000\n")
        conf = d / f"{cn}.cnf"
        conf.write_text(f"[ca]\ndefault_ca=lab\n[lab]\ndatabase={db}/index.txt\nserial={db}/serial\n"
                        f"new_certs_dir={db}\ndefault_md=sha256\npolicy=any\n"
                        f"[any]\ncommonName=supplied\n")
        _openssl("ca", "-batch", "-config", str(conf), "-cert", str(ca_crt), "-keyfile",
                 str(ca_key), "-in", str(csr), "-out", str(crt), "-startdate", dates[0],
                 "-enddate", dates[1], "-notext")
    return Identity(crt, key, ca_file)


def make_pki(d: Path) -> Pki:
    """A lab CA with a node, an intruder and an expired certificate, and a foreign CA."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = _ca(d, "correlate-lab-ca")
    other_key, other_crt = _ca(d, "other-ca")
    node = _leaf(d, NODE_CN, ca_key, ca_crt, ca_crt)
    intruder = _leaf(d, "intruder", ca_key, ca_crt, ca_crt)
    foreign = _leaf(d, "foreign-node", other_key, other_crt, other_crt)
    expired_dir = d / "expired"
    expired_dir.mkdir(exist_ok=True)
    expired = _leaf(expired_dir, NODE_CN, ca_key, ca_crt, ca_crt,
                    ("20190101000000Z", "20200101000000Z"))
    return Pki(node, intruder, foreign, expired)


def _pki_at(d: Path) -> Pki:
    ca = d / "correlate-lab-ca.crt"
    return Pki(Identity(d / f"{NODE_CN}.pem", d / f"{NODE_CN}.key", ca),
               Identity(d / "intruder.pem", d / "intruder.key", ca),
               Identity(d / "foreign-node.pem", d / "foreign-node.key", d / "other-ca.crt"),
               Identity(d / "expired" / f"{NODE_CN}.pem", d / "expired" / f"{NODE_CN}.key", ca))


def install(pki: Pki) -> None:
    """Put the node identity where Gluster reads it, keeping anything already there."""
    backup = STATE_DIR / "backup"
    backup.mkdir(parents=True, exist_ok=True)
    for name, src in zip(NAMES, (pki.node.pem, pki.node.key, pki.node.ca)):
        target = SSL_DIR / name
        if target.exists() and not (backup / name).exists() and not (STATE_DIR / "installed").exists():
            shutil.copy2(target, backup / name)
        shutil.copyfile(src, target)
    (SSL_DIR / "glusterfs.key").chmod(0o600)
    (STATE_DIR / "installed").write_text("")


def uninstall() -> None:
    """Restore what was in /usr/lib/ssl before install (or nothing)."""
    backup = STATE_DIR / "backup"
    for name in NAMES:
        target = SSL_DIR / name
        if (backup / name).exists():
            shutil.copy2(backup / name, target)
        else:
            target.unlink(missing_ok=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def up() -> Pki:
    """Lab PKI generated once and installed (idempotent)."""
    d = STATE_DIR / "pki"
    if not (d / f"{NODE_CN}.pem").exists():
        make_pki(d)
    pki = _pki_at(d)
    install(pki)
    return pki


TLS_OPTIONS = {"client.ssl": "on", "server.ssl": "on", "auth.ssl-allow": NODE_CN}


def ensure_volume(name: str = "tlsvol", options: dict[str, str] | None = None,
                  count: int = 2):
    """A distribute volume with I/O encryption (or `options` instead)."""
    spec = volumes.VolumeSpec(name, "distribute", count)
    return volumes.ensure(spec, TLS_OPTIONS if options is None else options)


def gfapi(args: list[str], identity: Identity | None = None, timeout: float = 60,
          tls12: bool = False, secure_access: bool = False) -> dict:
    """Run `python -m tests.lab.gfapi ARGS` (in-process: --timeout 0) and return its JSON,
    with `identity` bound over /usr/lib/ssl/glusterfs.* in a private mount namespace;
    {"status": "hung"} when it outlives `timeout`. tls12 caps the client at TLS 1.2 through
    OpenSSL's configuration (Gluster has no option for it): certificates then cross in clear.
    secure_access: this client alone has management encryption on (libgfapi checks for
    /var/lib/glusterd/secure-access): a directory holding only that file is bound over
    /var/lib/glusterd in its namespace; the shared glusterd stays plaintext."""
    cmd = [PYTHON, "-m", "tests.lab.gfapi", *args, "--timeout", "0"]
    binds = []
    if identity is not None:
        binds += [f"mount --bind {src} {SSL_DIR / name}" for name, src in
                  zip(NAMES, (identity.pem, identity.key, identity.ca))]
    if secure_access:
        fake = STATE_DIR / "secure-access-client"
        fake.mkdir(parents=True, exist_ok=True)
        (fake / "secure-access").write_text("")
        binds.append(f"mount --bind {fake} {SECURE_ACCESS.parent}")
    if binds:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'{" && ".join(binds)} && exec "$@"', "sh", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=gfapi_mod.REPO_ROOT, env=_env(tls12))
    except subprocess.TimeoutExpired:
        return {"status": "hung"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "failed", "returncode": done.returncode, "stderr": done.stderr[-2000:]}


TLS12_CONF = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
"""


def _env(tls12: bool) -> dict[str, str]:
    env = dict(os.environ)
    if tls12:
        conf = STATE_DIR / "tls12.cnf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(TLS12_CONF)
        env["OPENSSL_CONF"] = str(conf)
    return env


def down(names: tuple[str, ...] = ("tlsvol", "tlsvol2", "tlsvolplain")) -> None:
    for name in names:
        volumes.delete(name)
    uninstall()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.tls")
    p.add_argument("action", choices=("up", "down"))
    opts = p.parse_args(argv)
    if opts.action == "up":
        up()
        ensure_volume()
    else:
        down()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def workload(volume: str, directory: str, log, files: int = 20) -> None:
    """The small-file workload (gfapi, `files` files of 4 KiB in `directory`)."""
    subprocess.run([PYTHON, "-m", "tests.lab.gfapi", "workload", "--files", str(files),
                    "--size", "4096", "--dir", directory, "--timeout", "0", "--log", str(log),
                    "--volume", volume], check=True, capture_output=True, timeout=120,
                   cwd=gfapi_mod.REPO_ROOT)


def write_through_a_paused_brick(volume: str, path: str, log, paused_s: float = 10) -> int:
    """A client writes `path` for 20 s; the brick holding it is stopped (SIGSTOP) for
    `paused_s` in the middle. Returns that brick's index."""
    import time
    writer = subprocess.Popen([PYTHON, "-m", "tests.lab.gfapi", "write-loop", "--volume", volume,
                               "--path", path, "--seconds", "20", "--size", "1024", "--timeout",
                               "0", "--log", str(log)], stdout=subprocess.PIPE, text=True,
                              cwd=gfapi_mod.REPO_ROOT)
    pid = None
    try:
        time.sleep(3)
        dirs = volumes.brick_dirs(volume, 2)
        index = next(i for i in range(2) if (dirs[i] / path.lstrip("/")).exists())
        pid = volumes.pause_brick(volume, index)
        time.sleep(paused_s)
        volumes.resume_brick(pid)
        pid = None
        writer.communicate(timeout=60)
        return index
    finally:
        if pid is not None:
            volumes.resume_brick(pid)
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def calls_to_bricks(volume: str, events) -> "Counter":
    """Calls per procedure to `volume`'s bricks (a capture also sees other volumes' clients)."""
    from collections import Counter
    ports = {b.port for b in volumes.bricks(volume)}
    return Counter(e["procedure"] for e in events if e["kind"] == "rpc.call"
                   and int(e["dst"].rsplit(":", 1)[1]) in ports)


# One call per file and operation of the workload: the same count on any volume, any run.
WORKLOAD_CALLS = ("WRITE", "CREATE", "SETVOLUME", "FLUSH", "RELEASE", "OPEN")


def assert_same_calls(got: "Counter", plain: "Counter") -> None:
    """The workload's own calls exactly; the client's background calls within 2 either way:
    a STATFS, a READ, or a LOOKUP revalidating a cached inode, which the run's timing brings
    or not (a READ in 1 of 3 full runs; one LOOKUP more once, in a run slowed by the plaintext
    TLS probes)."""
    for procedure in WORKLOAD_CALLS:
        assert got[procedure] == plain[procedure], (procedure, got, plain)
    assert all(abs(got[p] - plain[p]) <= 2 for p in {*plain, *got}), (got, plain)


def plaintext_baseline(tmp_path: Path) -> tuple[str, Path, "Counter"]:
    """The workload's calls on the plaintext volume, to compare a TLS run with: a fresh
    directory used once on both volumes first (its first use fixes the layouts), then the
    workload on `tlsvolplain` captured. (directory, client log, calls to its bricks)."""
    import uuid
    from correlate.wire.decode import decode_capture
    from .capture import Tcpdump
    from .lab import DEFAULT_FILTER
    directory = f"/tlscmp-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "client.log"
    for volume in ("tlsvolplain", "tlsvol"):
        workload(volume, directory, log)
    pcap = tmp_path / "plain.pcap"
    with Tcpdump(pcap, DEFAULT_FILTER):
        workload("tlsvolplain", directory, log)
    return directory, log, calls_to_bricks("tlsvolplain", decode_capture(str(pcap)))
