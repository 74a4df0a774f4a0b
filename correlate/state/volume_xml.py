"""The topology `gluster volume info --xml` and `gluster volume status --xml` describe: for each
volume its bricks (host, path), their ports, and its replicate/disperse sets, read from a saved
copy (`--topology FILE`, either output or both, concatenated or in two files) or from the
local glusterd (`--topology live`).

The XML is untrusted (a file someone sent): at most MAX_BYTES, no DTD (so no entities to
expand), at most MAX_VOLUMES volumes and MAX_BRICKS bricks each.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

MAX_BYTES = 8 << 20         # a 100-volume cluster's info and status are about 1 MiB
MAX_VOLUMES = 4096
MAX_BRICKS = 4096           # per volume
MAX_TOTAL_BRICKS = 65536    # over all volumes (the Topology's table size)
LIVE_TIMEOUT_S = 5          # glusterd answers in well under a second when it is up
LIVE = "live"
_DOCUMENT = re.compile(r"<cliOutput\b.*?</cliOutput\s*>", re.S)
_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.I)


class TopologyError(ValueError):
    """A topology input that cannot be used: the message names it and the place."""


@dataclass
class Volume:
    name: str
    ports: dict[tuple[str, str], int] = field(default_factory=dict)   # (host, path) -> port
    bricks: list[tuple[str, str]] = field(default_factory=list)       # in volume order
    sets: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # name, members


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def _brick(name: str) -> tuple[str, str] | None:
    host, sep, path = (name or "").strip().partition(":/")
    return (host, "/" + path) if sep and host else None


def _info(vol_el, vol: Volume) -> None:
    bricks = []
    for b in vol_el.iterfind("bricks/brick"):
        brick = _brick(b.findtext("name") or b.text or "")
        if brick and len(bricks) < MAX_BRICKS:
            bricks.append(brick)
    vol.bricks = bricks
    replica, disperse = _int(vol_el.findtext("replicaCount")), _int(vol_el.findtext("disperseCount"))
    # the client graph groups consecutive bricks: VOL-replicate-N / VOL-disperse-N
    size, kind = (disperse, "disperse") if disperse and disperse > 1 else (replica, "replicate")
    if size and size > 1:
        vol.sets = [(f"{vol.name}-{kind}-{i // size}", bricks[i:i + size])
                    for i in range(0, len(bricks), size)]


def _status(vol_el, vol: Volume) -> None:
    for node in vol_el.iterfind("node"):
        host, path = (node.findtext("hostname") or "").strip(), (node.findtext("path") or "").strip()
        port = _int(node.findtext("ports/tcp")) or _int(node.findtext("port"))
        # the daemons' rows (Self-heal Daemon, path localhost) have no brick path
        if host and path.startswith("/") and port and 0 < port < 65536 \
                and len(vol.ports) < MAX_BRICKS:
            vol.ports[(host, path)] = port


def parse(text: str, where: str = "topology") -> list[Volume]:
    """The volumes in one or more concatenated `gluster ... --xml` outputs."""
    if _DTD.search(text):
        raise TopologyError(f"{where}: a DTD or entity declaration: not gluster's XML, refused")
    docs = _DOCUMENT.findall(text)
    if not docs:
        raise TopologyError(f"{where}: no <cliOutput> document: expected the output of "
                            "`gluster volume info --xml` or `gluster volume status --xml`")
    volumes: dict[str, Volume] = {}
    for doc in docs:
        if sum(len(v.bricks) + len(v.ports) for v in volumes.values()) > MAX_TOTAL_BRICKS:
            raise TopologyError(f"{where}: more than {MAX_TOTAL_BRICKS} bricks: not one cluster")
        try:
            root = ET.fromstring(doc)
        except ET.ParseError as exc:
            line = text[:text.index(doc)].count("\n") + exc.position[0]
            raise TopologyError(f"{where}: line {line}: {exc.msg if hasattr(exc, 'msg') else exc}") \
                from None
        if _int(root.findtext("opRet")) not in (0, None):
            raise TopologyError(f"{where}: gluster said: "
                                f"{(root.findtext('opErrstr') or 'an error').strip()[:200]}")
        for path, fill, key in (("volInfo/volumes/volume", _info, "name"),
                                ("volStatus/volumes/volume", _status, "volName")):
            for vol_el in root.iterfind(path):
                name = (vol_el.findtext(key) or "").strip()
                if not name:
                    continue
                if name not in volumes:
                    if len(volumes) >= MAX_VOLUMES:
                        continue
                    volumes[name] = Volume(name)
                fill(vol_el, volumes[name])
    return list(volumes.values())


def read_file(path: str) -> list[Volume]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise TopologyError(f"{path}: larger than {MAX_BYTES >> 20} MiB: not a volume description")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{path}: not UTF-8 (byte {exc.start}): gluster writes UTF-8") from None
    return parse(text, path)


def read_live(gluster: str = "gluster", timeout: float = LIVE_TIMEOUT_S) -> list[Volume]:
    """Ask the local glusterd; a TopologyError says why not (no gluster, glusterd down)."""
    exe = shutil.which(gluster)
    if exe is None:
        raise TopologyError(f"{LIVE}: no `{gluster}` command on this host")
    out = []
    for args in (["volume", "info"], ["volume", "status", "all"]):
        try:
            res = subprocess.run([exe, "--xml", "--mode=script", *args], capture_output=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TopologyError(f"{LIVE}: `gluster {' '.join(args)}` did not answer in "
                                f"{timeout:g} s (is glusterd running?)") from None
        out.append(res.stdout[:MAX_BYTES].decode("utf-8", "replace"))
    return parse("\n".join(out), f"{LIVE} (gluster --xml volume info/status)")


def read(specs) -> list[Volume]:
    """Every --topology given: files, or `live`; volumes named twice are merged."""
    merged: dict[str, Volume] = {}
    for spec in specs:
        for vol in read_live() if spec == LIVE else read_file(spec):
            have = merged.setdefault(vol.name, Volume(vol.name))
            have.ports.update(vol.ports)
            have.bricks = vol.bricks or have.bricks
            have.sets = vol.sets or have.sets
    return list(merged.values())
