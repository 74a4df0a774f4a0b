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
- `state.fuse`: a FUSE request the `fuse` probes saw, joined to its RPCs and the bricks'
  state (`join(event)`, see state/fuse.py).
"""
from __future__ import annotations

from .bricks import Bricks
from .fuse import FuseJoin, FuseRequests
from .clients import APPLICATION, CLIENT, DAEMON, UNKNOWN, Actor, Clients, ClientProcess
from .loss import CaptureLoss

__all__ = ["GlusterState", "FuseJoin", "Actor", "ClientProcess", "APPLICATION", "CLIENT", "DAEMON", "UNKNOWN"]


class GlusterState:
    # The procedures whose decoded arguments it reads: a detector that uses the state lists
    # these in its `wants.details` so the decoder keeps them.
    DETAILS = Clients.PROCEDURES | Bricks.PROCEDURES

    def __init__(self):
        self.clients = Clients()
        self.loss = CaptureLoss()
        self.bricks = Bricks()
        self.fuse = FuseRequests(self.clients)

    def observe(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "tcp.gap":
            self.loss.observe_gap(ev)
        elif kind == "rpc.call" and ev.get("procedure") == "SETVOLUME":
            self.clients.observe_setvolume(ev)
        elif kind == "tcp.close":
            self.clients.observe_close(ev)
        elif kind == "rpc.reply" and ev.get("procedure") == "GETSPEC" and ev.get("op_ret") != -1:
            self.bricks.observe_volfile(ev)
        self.fuse.observe(ev)

    def actor(self, call: dict) -> Actor:
        """Who made a call (see clients.Clients.actor)."""
        return self.clients.actor(call)

    def drops(self) -> dict[str, int]:
        return {"connections whose client was forgotten (table full)": self.clients.dropped,
                "bricks forgotten (table full)": self.bricks.dropped}
