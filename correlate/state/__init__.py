"""The shared Gluster state: what every detector would otherwise learn for itself, computed
once per event and read by all of them.

The detector runtime feeds `GlusterState.observe(event)` every event, before any detector
sees it; detectors receive the state through the `correlate_detectors(config, state)` hook
and only read it:

- `state.clients`: the client process behind each brick connection and the actor of each
  call (an application, the client by itself, or one of Gluster's own daemons);
- `state.loss`: capture loss, per connection and overall (`reply_may_be_lost(call)`);
- `state.bricks`: from the volfiles, the bricks in a replica/disperse set and those holding
  the only copy of their files (`set_of(host, path)`, `is_only_copy(host, path)`);
- `state.topology`: brick identity, the brick path and volume behind `host:port`
  (`brick(endpoint)`, `volume(endpoint)`), replica/disperse peers (`peers(endpoint)`), a
  connection's client label (`client_of(event)`);
- `state.files`: file names by gfid (`path(gfid)`, `known_path(gfid)`, `gfid_of(pargfid, name)`);
- `state.calls`: the calls waiting for a reply per connection (`call_of(reply)`,
  `pending(event)`);
- `state.fuse`: a FUSE request the `fuse` probes saw, joined to its RPCs and the bricks'
  state (`join(event)`, see state/fuse.py).

The topology can also be seeded before the first event from `gluster volume info/status
--xml` (`seed_topology`, see volume_xml), for captures that start after the clients
connected. docs/plugins.md ("The shared state") shows a detector using it.
"""
from __future__ import annotations

from .bricks import Bricks
from .calls import Calls
from .clients import APPLICATION, CLIENT, DAEMON, UNKNOWN, Actor, Clients, ClientProcess
from .files import NAMING, FileNames
from .fuse import FuseJoin, FuseRequests
from .loss import CaptureLoss
from .topology import Topology

__all__ = ["GlusterState", "FuseJoin", "Actor", "ClientProcess", "APPLICATION", "CLIENT", "DAEMON", "UNKNOWN"]


class GlusterState:
    # The procedures whose decoded arguments it reads: the runtime always asks the decoder
    # for these (detector.details_needed), whatever the detectors list.
    DETAILS = Clients.PROCEDURES | Bricks.PROCEDURES | Topology.PROCEDURES | NAMING

    def __init__(self):
        self.clients = Clients()
        self.loss = CaptureLoss()
        self.bricks = Bricks()
        self.topology = Topology()
        self.files = FileNames()
        self.calls = Calls()
        self.fuse = FuseRequests(self.clients)
        self._fuse_observe = self.fuse.observe      # None when no input brings FUSE requests

    def seed_topology(self, volumes) -> None:
        """Bricks, ports and sets from `gluster volume info/status --xml`
        (volume_xml.read), before the first event."""
        self.topology.seed(volumes)
        self.bricks.seed(volumes)

    def observe(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "rpc.call":
            self.calls.observe_call(ev)
            proc = ev.get("procedure")
            if proc in _TOPOLOGY:
                self.topology.observe(ev)
                if proc == "SETVOLUME":
                    self.clients.observe_setvolume(ev)
        elif kind == "rpc.reply":
            self.calls.observe_reply(ev)
            proc = ev.get("procedure")
            if proc in _TOPOLOGY:
                self.topology.observe(ev)
                if proc == "GETSPEC" and ev.get("op_ret") != -1:
                    self.bricks.observe_volfile(ev)
            if proc in NAMING:
                # a reply carries its call's identifying args; the kept call is the fallback
                self.files.learn(ev, ev.get("args") or (self.calls.call_of(ev) or {}).get("args"))
        elif kind == "tcp.gap":
            self.loss.observe_gap(ev)
        elif kind == "tcp.close":
            self.clients.observe_close(ev)
            self.calls.observe_close(ev)
        if self._fuse_observe is not None:
            self._fuse_observe(ev)

    def expect_probes(self, expected: bool) -> None:
        """Said before the first event when no input can carry probe events (False): what
        is kept only to join them (the FUSE requests' RPCs) is not kept."""
        self.fuse.expect_requests(expected)
        self._fuse_observe = self.fuse.observe if expected else None

    def actor(self, call: dict) -> Actor:
        """Who made a call (see clients.Clients.actor)."""
        return self.clients.actor(call)

    def drops(self) -> dict[str, int]:
        """What the tables forgot to stay bounded: reason -> count (the runtime reports it)."""
        return {"connections whose client was forgotten (table full)": self.clients.dropped,
                "bricks forgotten (table full)": self.bricks.dropped,
                "calls forgotten before their reply (table full)": self.calls.dropped,
                "file names forgotten (table full)": max(self.files.names.dropped,
                                                         self.files.entries.dropped)}


_TOPOLOGY = Topology.PROCEDURES
