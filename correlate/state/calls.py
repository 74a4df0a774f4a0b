"""Calls waiting for their reply, per connection: the whole call event a reply answers.

A reply already carries its call's time, latency, credential and identifying arguments (the
decoder joins them); this is for the detectors that need the call itself (its other
arguments, or the call event as evidence), or the calls a closing connection leaves
unanswered. A call is kept until its reply has been handled (every detector sees the reply
with `call_of` still answering) or its connection closes (every detector sees the close with
`pending` still answering); a close costs the calls of that connection only. Bounded:
MAX_CALLS over all connections, oldest first, counted in `dropped`.
"""
from __future__ import annotations

from collections import OrderedDict

# Gluster keeps far fewer in flight (64 per connection by default); a flood of unanswered
# calls stops here. A lean call holds its record (at most 4 KiB) to decode later.
MAX_CALLS = 4096


class Calls:
    def __init__(self, limit: int = MAX_CALLS):
        self.limit = limit
        self._calls: OrderedDict[tuple, dict] = OrderedDict()   # (source, conn, xid) -> call
        # (source, conn) -> its xids in the order sent (a dict: ordered, O(1) removal)
        self._by_conn: dict[tuple, dict] = {}
        self._answered: tuple = (None, None)     # the reply being handled: (key, its call)
        self._closed: tuple = (None, ())         # the close being handled: (conn, its calls)
        self.dropped = 0

    def observe_call(self, call: dict) -> None:
        conn = (call.get("source"), call.get("conn"))
        xid = call.get("xid")
        key = (*conn, xid)
        self._calls.pop(key, None)
        self._calls[key] = call
        self._by_conn.setdefault(conn, {})[xid] = None
        self._closed = (None, ())
        if len(self._calls) > self.limit:
            self._forget(self._calls.popitem(last=False)[0])
            self.dropped += 1

    def observe_reply(self, reply: dict) -> None:
        key = (reply.get("source"), reply.get("conn"), reply.get("xid"))
        call = self._calls.pop(key, None)
        if call is not None:
            self._forget(key)
        self._answered = (key, call)
        self._closed = (None, ())

    def observe_close(self, ev: dict) -> None:
        conn = (ev.get("source"), ev.get("conn"))
        calls = [self._calls.pop((*conn, xid)) for xid in self._by_conn.pop(conn, ())]
        self._closed = (conn, calls)

    def _forget(self, key: tuple) -> None:
        xids = self._by_conn.get(key[:2])
        if xids is not None:
            xids.pop(key[2], None)
            if not xids:
                del self._by_conn[key[:2]]

    def call_of(self, reply: dict) -> dict | None:
        """The call a reply answers (while that reply is being handled, or later while the
        call is still pending), None when the capture did not show it or it was dropped."""
        key = (reply.get("source"), reply.get("conn"), reply.get("xid"))
        if self._answered[0] == key:
            return self._answered[1]
        return self._calls.get(key)

    def pending(self, ev: dict) -> list[dict]:
        """The calls still waiting for a reply on the connection of `ev`, in the order sent;
        for a tcp.close being handled, those its connection left unanswered."""
        conn = (ev.get("source"), ev.get("conn"))
        if self._closed[0] == conn:
            return list(self._closed[1])
        return [self._calls[(*conn, x)] for x in self._by_conn.get(conn, ())]

    def __len__(self) -> int:
        return len(self._calls)
