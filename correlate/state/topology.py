"""Brick identity: the brick path and volume behind a server endpoint (`host:port`), the client
process behind a connection, and which bricks are replica or disperse peers.

Learned as events pass:
- PORTBYBRICK (call `brick`, reply `port`) and SETVOLUME (`remote-subvolume`) name the brick
  at `host:port`; SETVOLUME's `volfile-key` names its volume.
- SETVOLUME's `process-uuid` (`...-PID:30452-HOST:vm-PC_NAME:vol-client-0-...`) names the
  client process of that connection.
- The GETSPEC reply's volfile lists the replicate/disperse sets (`brick_sets`). Without it
  (capture started after the mount), the bricks of one volume count as peers of each other.

or given before the first event (`seed`, from `gluster volume info/status --xml`: see
volume_xml), for captures that start after the clients connected. What the capture shows
later overrides the seed for the same brick (a brick restarted since has a new port).

Memory is bounded: each table keeps at most MAX_ENTRIES entries, oldest dropped first.
"""
from __future__ import annotations

import re

MAX_ENTRIES = 65536
_PID = re.compile(r"-PID:(\d+)")
_HOST = re.compile(r"-HOST:(.*?)-PC_NAME:")


def _put(table: dict, key, value) -> None:
    table.pop(key, None)
    table[key] = value
    if len(table) > MAX_ENTRIES:
        table.pop(next(iter(table)))


def _host(endpoint: str | None) -> str:
    return (endpoint or "").rsplit(":", 1)[0]


def client_label(process_uuid: str) -> str | None:
    """'pid 30452 on vm' from a SETVOLUME process-uuid."""
    pid = _PID.search(process_uuid or "")
    if not pid:
        return None
    host = _HOST.search(process_uuid)
    return f"pid {pid.group(1)}" + (f" on {host.group(1)}" if host and host.group(1) else "")


def _members(brick_set: dict) -> list[tuple[str, str]]:
    return [tuple(b) for b in brick_set.get("bricks", []) if isinstance(b, list) and len(b) == 2]


class Topology:
    # The procedures it learns from, all through their decoded args or results: whoever feeds
    # it events lists these in its `details` (GlusterState.DETAILS does).
    PROCEDURES = frozenset({"PORTBYBRICK", "SETVOLUME", "GETSPEC"})

    def __init__(self):
        self.brick_path: dict[str, str] = {}        # "host:port" -> brick path
        self.volume_of: dict[str, str] = {}         # "host:port" -> volume name
        self.endpoint_of: dict[tuple[str, str], str] = {}   # (host, path) -> "host:port"
        self.client: dict[tuple, str] = {}          # (source, conn) -> client label
        self.sets: list[dict] = []                  # GETSPEC brick_sets, latest volfile
        # (host, path) -> (set name, its members), from `seed`: one lookup, however many volumes
        self.seeded_sets: dict[tuple[str, str], tuple[str, list]] = {}
        self._portbybrick: dict[tuple, str] = {}    # (source, conn, xid) -> brick path asked
        # endpoint -> peers(endpoint), until the topology learns something (rarely): asked
        # for every brick and procedure at each slow-brick judgement, it scans every set
        self._peers: dict[str, tuple[tuple[str, ...], str]] = {}

    def seed(self, volumes) -> None:
        """Take what `gluster volume info/status --xml` said (volume_xml.Volume records)."""
        self._peers.clear()
        for vol in volumes:
            for (host, path), port in vol.ports.items():
                endpoint = f"{host}:{port}"
                self._name(endpoint, path)
                _put(self.volume_of, endpoint, vol.name)
            for name, members in vol.sets:
                for brick in members:
                    if len(self.seeded_sets) < MAX_ENTRIES:
                        self.seeded_sets[brick] = (name, members)

    def observe(self, ev: dict) -> None:
        proc = ev.get("procedure")
        if proc not in self.PROCEDURES:
            return
        self._peers.clear()         # what it learns may change any brick's peers
        kind = ev.get("kind")
        if proc == "PORTBYBRICK":
            key = (ev.get("source"), ev.get("conn"), ev.get("xid"))
            if kind == "rpc.call":
                brick = (ev.get("args") or {}).get("brick")
                if isinstance(brick, str):
                    _put(self._portbybrick, key, brick)
            elif kind == "rpc.reply":
                brick = self._portbybrick.pop(key, None)
                port = (ev.get("result") or {}).get("port")
                if brick and isinstance(port, int) and port > 0:
                    self._name(f"{_host(ev.get('src'))}:{port}", brick)
        elif proc == "SETVOLUME" and kind == "rpc.call":
            d = (ev.get("args") or {}).get("dict") or {}
            if not isinstance(d, dict):
                return
            server = ev.get("dst") or ""
            if isinstance(d.get("remote-subvolume"), str):
                self._name(server, d["remote-subvolume"])
            if isinstance(d.get("volfile-key"), str):
                _put(self.volume_of, server, d["volfile-key"].lstrip("/"))
            label = client_label(str(d.get("process-uuid") or ""))
            if label:
                _put(self.client, (ev.get("source"), ev.get("conn")), label)
        elif proc == "GETSPEC" and kind == "rpc.reply":
            sets = (ev.get("result") or {}).get("brick_sets")
            if isinstance(sets, list) and sets:
                self.sets = sets

    def _name(self, endpoint: str, path: str) -> None:
        _put(self.brick_path, endpoint, path)
        _put(self.endpoint_of, (_host(endpoint), path), endpoint)

    def brick(self, endpoint: str) -> str | None:
        """The brick path served at `host:port`, None when unknown."""
        return self.brick_path.get(endpoint)

    def volume(self, endpoint: str) -> str | None:
        """The volume of the brick at `host:port`, None when unknown."""
        return self.volume_of.get(endpoint)

    def client_of(self, ev: dict) -> str:
        """The client process of a call (its connection's SETVOLUME), else its address and
        the pid in its credentials."""
        label = self.client.get((ev.get("source"), ev.get("conn")))
        if label:
            return label
        src = ev.get("src") if ev.get("kind") == "rpc.call" else ev.get("dst")
        pid = (ev.get("cred") or {}).get("pid")
        return f"{_host(src)}" + (f" pid {pid}" if pid else "")

    def peers(self, endpoint: str) -> tuple[list[str], str]:
        """The endpoints of the bricks in the same replica/disperse set, and how that is
        known: 'volfile <set name>', 'volume <name>' (no volfile seen), or '' (unknown)."""
        known = self._peers.get(endpoint)
        if known is None:
            if len(self._peers) >= MAX_ENTRIES:
                self._peers.clear()
            found, how = self._find_peers(endpoint)
            known = self._peers[endpoint] = (tuple(found), how)
        return list(known[0]), known[1]

    def _find_peers(self, endpoint: str) -> tuple[list[str], str]:
        path = self.brick_path.get(endpoint)
        host = _host(endpoint)
        if path is not None:
            for s in self.sets:
                members = _members(s)
                if (host, path) in members:
                    found = [self.endpoint_of.get(m) for m in members if m != (host, path)]
                    return [e for e in found if e], f"volfile {s.get('name')}"
            seeded = self.seeded_sets.get((host, path))
            if seeded is not None:
                found = [self.endpoint_of.get(m) for m in seeded[1] if m != (host, path)]
                return [e for e in found if e], f"volfile {seeded[0]}"
        volume = self.volume_of.get(endpoint)
        if volume is None:
            return [], ""
        return [e for e, v in self.volume_of.items() if v == volume and e != endpoint], \
            f"volume {volume}"
