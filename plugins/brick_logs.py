"""Which brick a Gluster log line is about, for detectors that cite logs as evidence.

- A client log line carries its translator (`0-VOL-client-N`); SETVOLUME's process-uuid
  (`PC_NAME:VOL-client-N`) says which brick that translator connects to.
- A brick's own log is known by its start line (`--brick-name PATH` in `cmdlinestr`) or by
  the io-stats translator named after the brick path, whatever the file is called, and by
  glusterd's name for it (/srv/b1 -> srv-b1.log).
"""
from __future__ import annotations

import re
from collections import OrderedDict

from correlate.state.clients import parse_setvolume

from .gluster_facts import host_of

MAX_ENTRIES = 4096
ENOTCONN = 107
BRICK_NAME = re.compile(r"--brick-name (/\S{1,4096})")
# What the client log says when it loses a brick or cannot find its port.
CLIENT_MARKS = ("disconnected from", "keep trying to connect", "failed to get the port number",
                "Connection refused")
# What a brick's log says when it starts or stops (a SIGKILL leaves nothing).
BRICK_MARKS = ("Started running", "shutting down", "received signum")


def brick_log_name(path: str) -> str:
    """glusterd names a brick's log after its path: /srv/b1 -> srv-b1.log"""
    return path.strip("/").replace("/", "-") + ".log"


def _put(table: OrderedDict, key, value) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > MAX_ENTRIES:
        table.popitem(last=False)


class BrickLogs:
    def __init__(self):
        self.translators: OrderedDict[str, tuple[str, str]] = OrderedDict()  # -> (host, path)
        self.sources: OrderedDict[str, str] = OrderedDict()     # brick log source -> path

    def observe_setvolume(self, call: dict) -> None:
        options = (call.get("args") or {}).get("dict")
        process = parse_setvolume(options) if isinstance(options, dict) else None
        if process is not None and process.translator and ":" in process.brick:
            _put(self.translators, process.translator,
                 (host_of(call.get("dst")), process.brick.split(":", 1)[1]))

    def observe_log(self, ev: dict) -> None:
        fields = ev.get("fields") if isinstance(ev.get("fields"), dict) else {}
        named = BRICK_NAME.search(str(fields.get("cmdlinestr") or ""))
        xlator = str(ev.get("xlator") or "")
        path = named.group(1) if named else (xlator if xlator.startswith("/") else None)
        if path:
            _put(self.sources, str(ev.get("source") or ""), path)

    def kind(self, ev: dict, host: str, path: str | None) -> str | None:
        """'brick' (its own log starting or stopping), 'client' (its client translator lost
        it), 'enotconn' (a call to it failed in the client), or None: not about this brick."""
        if not path:
            return None
        message = str(ev.get("message") or "")
        source = str(ev.get("source") or "")
        if self.sources.get(source) == path or source.endswith(brick_log_name(path)):
            return "brick" if any(m in message for m in BRICK_MARKS) else None
        if self.translators.get(str(ev.get("xlator") or "")) != (host, path):
            return None
        fields = ev.get("fields") if isinstance(ev.get("fields"), dict) else {}
        if str(fields.get("errno")) == str(ENOTCONN) or "not connected" in message:
            return "enotconn"
        return "client" if any(m in message for m in CLIENT_MARKS) else None
