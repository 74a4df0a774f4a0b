"""TCP connection tracking: handshake outcomes as events, and per-direction reassembly that
hands each byte of a stream to a StreamSink exactly once, in order.

Positions in a stream are kept as unbounded ints (the 32-bit sequence number unwrapped around
the next expected byte), so wraparound needs no special case anywhere else.

What becomes an event (all with src = client, dst = server, conn, frame):
  tcp.connect  SYN/ACK answering a SYN (handshake_ns from the first SYN, attempts)
  tcp.refused  SYN answered by RST (reason "rst") or by an ICMP unreachable quoting it
               (reason "icmp", icmp_type, icmp_code, icmp_from)
  tcp.timeout  SYN unanswered for syn_timeout_ns of capture time, or retransmitted and still
               unanswered at the end of the input (attempts, waited_ns; frame = first SYN;
               reported at once, and a late SYN/ACK still gives tcp.connect). SYNs retransmitted
               after that are counted: when the connection is given up (end of input, port
               reused) a second tcp.timeout with final=true has them all (attempts, syn_span_ns
               from the first SYN to the last, frame = the last SYN)
  tcp.close    the first FIN (reason "fin", half: the other side may still send;
               unacked_bytes: what the closing side sent that the peer had not yet ACKed)
               or an RST on an open connection (reason "rst"), by client or server
  tcp.keepalive  a TCP keepalive probe (no data, seq one below the next byte) by client or
               server: an idle connection that still lives
  tcp.gap      bytes of a stream the capture never showed (missing, direction "to_server" or
               "to_client"), once that is certain: the receiver acknowledged them, the
               out-of-order buffer is full, or the connection ends. The sink hears on_gap().
"""
from __future__ import annotations

import heapq
from collections import OrderedDict

from ..diagnostics import Diagnostics
from ..events import make_event
from .capture import Frame
from .model import Conn, StreamSink, endpoint
from .packet import ACK, FIN, RST, SYN, IcmpUnreachable, Segment, parse_frame

MASK = 0xFFFFFFFF
HALF = 0x80000000
MAX_BUFFERED_PER_DIRECTION = 4 * 1024 * 1024
MAX_BUFFERED_TOTAL = 64 * 1024 * 1024
SEGMENT_COST = 256      # bookkeeping charged per buffered segment: floods of tiny ones are bounded too
MAX_CONNECTIONS = 10_000
MAX_RECENTLY_CLOSED = 4096
MAX_RST_SKIP = 1 << 20   # an RST further ahead than this is not this stream's next byte

SYN_SENT, OPEN = 0, 1


def _is_gluster_port(port: int) -> bool:
    """glusterd, the NFS/portmap helpers and the brick port range are servers."""
    return 24007 <= port <= 24008 or 38465 <= port <= 38469 or 49152 <= port <= 60999


def sender_is_server(sport: int, dport: int) -> bool:
    """For a connection first seen mid-stream: is the sender of this segment the server?"""
    s_known, d_known = _is_gluster_port(sport), _is_gluster_port(dport)
    if s_known != d_known:
        return s_known
    return sport < dport


class _Direction:
    """One direction of a stream: the next byte to deliver and what arrived ahead of it."""
    __slots__ = ("nxt", "ahead", "starts", "ahead_bytes", "fin", "acked", "placed_bare")

    def __init__(self, nxt: int | None = None):
        self.nxt = nxt                      # stream position of the next byte to deliver
        self.placed_bare = False            # nxt from a bare segment's seq, no byte seen yet
        self.ahead: dict[int, bytes] = {}   # position -> bytes that arrived out of order
        self.starts: list[int] = []         # heap of the keys of `ahead`
        self.ahead_bytes = 0                # buffered bytes plus SEGMENT_COST per segment
        self.fin: int | None = None         # position of this direction's FIN, once seen
        self.acked: int | None = None       # the peer's latest ACK number (raw 32 bits)

    def position(self, seq: int) -> int:
        """Unwrap a 32-bit sequence number to the stream position nearest to `nxt`."""
        return self.nxt + (((seq - self.nxt) + HALF) & MASK) - HALF


class _State:
    __slots__ = ("conn", "keys", "phase", "dirs", "client_isn", "syn_first_ns", "syn_frame",
                 "attempts", "timed_out", "fin_by", "opened", "syn_last_ns", "syn_last_frame",
                 "reported_attempts", "last_frame")

    def __init__(self, conn: Conn, keys: tuple[tuple, tuple], phase: int):
        self.conn = conn
        self.keys = keys                    # (client -> server key, server -> client key)
        self.phase = phase
        self.dirs = (_Direction(), _Direction())    # [0] client -> server, [1] server -> client
        self.client_isn = 0
        self.syn_first_ns = 0
        self.syn_frame = 0
        self.attempts = 0
        self.syn_last_ns = 0
        self.syn_last_frame = 0
        self.reported_attempts = 0          # SYNs counted in the tcp.timeout already reported
        self.timed_out = False
        self.fin_by: str | None = None
        self.opened = phase == OPEN         # the sink may hold state for it: tell it on close
        self.last_frame = 0                 # the packet that last moved it in the LRU order


class TcpTracker:
    """Feed frames in capture order; get events (the sink's included) in time order."""

    def __init__(self, source: str, sink: StreamSink, diag: Diagnostics, *,
                 syn_timeout_ns: int = 3_000_000_000, max_connections: int = MAX_CONNECTIONS,
                 max_buffered: int = MAX_BUFFERED_PER_DIRECTION):
        self.source = source
        self.sink = sink
        self.diag = diag
        self.syn_timeout_ns = syn_timeout_ns
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self._conns: dict[tuple, tuple[_State, bool]] = {}   # 4-tuple -> (state, from client)
        self._lru: OrderedDict[_State, None] = OrderedDict()  # least recently active first
        self._pending: OrderedDict[_State, None] = OrderedDict()  # SYNs waiting, oldest first
        self._recently_closed: OrderedDict[tuple, None] = OrderedDict()
        self._buffered_total = 0
        self._numbers = 0
        self._frame = 0                     # the packet being fed
        self._now = 0                       # the capture's clock: latest time seen
        self._expiry_at = 0                 # no pending SYN can time out before this

    # ---- input ---------------------------------------------------------------------------

    def feed(self, frame: Frame) -> list[dict]:
        pkt = parse_frame(frame, self.diag)
        if pkt is None:
            return self.tick(frame.time_ns)
        return self.feed_parsed(frame, pkt)

    def tick(self, time_ns: int) -> list[dict]:
        """The capture's clock reached time_ns: SYNs unanswered for too long time out.
        (feed does this for every frame; a tracker fed only some connections of a capture,
        wire.parallel, hears of the other frames' times through it.)"""
        events: list[dict] = []
        if time_ns > self._now:
            self._now = time_ns
        if self._now >= self._expiry_at and self._pending:
            self._expire_syns(events)
        return events

    def feed_parsed(self, frame: Frame, pkt: Segment | IcmpUnreachable) -> list[dict]:
        """feed, for a frame the caller parsed already."""
        events = self.tick(frame.time_ns)
        self._frame = frame.number
        if type(pkt) is Segment:
            self._segment(pkt, events)
        else:
            self._icmp(pkt, events)
        return events

    def finish(self, order: list | None = None) -> list[dict]:
        """End of input: unanswered SYNs that were retried time out, open streams are flushed
        (a missing tail becomes a gap) and the sink hears on_close for each. `order` gets,
        per event, why it comes where it does: (0, first SYN's packet) for timeouts, (1, the
        packet that last touched the connection) for the rest (wire.parallel merges by it)."""
        events: list[dict] = []
        now = self._now
        for st in list(self._pending):
            if st.attempts >= 2 or now - st.syn_first_ns >= self.syn_timeout_ns:
                self._timeout(st, events)
                if order is not None:
                    order.extend([(0, st.syn_frame)] * (len(events) - len(order)))
        for st in list(self._lru):
            self._end(st, now, events)
            if order is not None:
                order.extend([(1, st.last_frame)] * (len(events) - len(order)))
        return events

    # ---- segments ------------------------------------------------------------------------

    def _segment(self, seg: Segment, events: list[dict]) -> None:
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        entry = self._conns.get(key)
        flags = seg.flags
        if flags & SYN:
            if flags & RST:
                self.diag.skip("TCP segments with both SYN and RST", f"packet {seg.number}")
                return
            if flags & ACK:
                st = self._syn_ack(seg, key, entry, events)
            else:
                st = self._syn(seg, key, entry, events)
            if st is not None and (seg.payload or seg.truncated):
                self._data(st, seg.src == st.keys[0][0] and seg.sport == st.keys[0][1], seg, events,
                           seg.seq + 1)
            return
        if entry is None:
            if not seg.payload or flags & RST:
                return          # a bare ACK, FIN or RST tells nothing about an unknown connection
            recent = self._recently_closed
            if key in recent or (seg.dst, seg.dport, seg.src, seg.sport) in recent:
                self.diag.skip("TCP segments after their connection closed", f"packet {seg.number}")
                return
            entry = self._open_midstream(seg, events)
        st, from_client = entry
        self._lru.move_to_end(st)
        st.last_frame = seg.number
        if flags & RST:
            self._rst(st, from_client, seg, events)
            return
        if st.phase == SYN_SENT:
            # Only a peer that saw the SYN/ACK sends anything else: the capture missed it.
            self._pending.pop(st, None)
            st.phase = OPEN
            st.opened = True
            if st.dirs[1].nxt is None:
                # The server's stream starts where the client acknowledges it (or where the
                # server's first segment is): a reply lost with the SYN/ACK is then a gap
                # when the client acknowledges it, not bytes the capture never knew of.
                if not from_client:
                    st.dirs[1].nxt = seg.seq
                elif flags & ACK:
                    st.dirs[1].nxt = seg.ack
        if flags & ACK:
            # First what this segment acknowledges: a reply follows the call it answers.
            other = st.dirs[from_client]
            other.acked = seg.ack
            if other.nxt is not None and 0 < ((seg.ack - other.nxt) & MASK) < HALF:
                self._acked(st, not from_client, other, seg, events)
        payload = seg.payload
        if payload or seg.truncated:
            d = st.dirs[not from_client]
            nxt = d.nxt
            if nxt is not None and not d.ahead and not seg.truncated and not (seg.seq - nxt) & MASK:
                # The common case, in order with nothing waiting, without the general path.
                d.nxt = nxt + len(payload)
                st.opened = True
                out = self.sink.on_data(st.conn, from_client, seg.time_ns, payload)
                if out:
                    events.extend(out)
            else:
                self._data(st, from_client, seg, events, seg.seq)
        elif not flags & FIN:
            d = st.dirs[not from_client]
            if d.nxt is None:
                # A bare segment says where its sender's stream is: what the peer
                # acknowledges past it and the capture never shows is then a gap (a reply
                # lost on a connection the capture joined mid-stream), not unknown bytes.
                d.nxt = seg.seq
                d.placed_bare = True
            elif not (seg.seq + 1 - d.nxt) & MASK and not d.ahead:
                # A keepalive probe (seq one below the next byte, no data): the connection
                # lives though idle. Gluster's sockets send one after 20 s idle.
                events.append(self._event("tcp.keepalive", st, seg.time_ns, seg.number,
                                          by="client" if from_client else "server"))
        if flags & FIN:
            self._fin(st, from_client, seg, events)

    def _syn(self, seg: Segment, key: tuple, entry, events: list[dict]) -> _State | None:
        if entry is not None:
            st, from_client = entry
            if st.phase == SYN_SENT and from_client and seg.seq == st.client_isn:
                st.attempts += 1                    # a retransmitted SYN
                st.syn_last_ns, st.syn_last_frame = seg.time_ns, seg.number
                return None
            self._end(st, seg.time_ns, events)      # the 4-tuple is reused by a new connection
        self._recently_closed.pop(key, None)
        self._recently_closed.pop((seg.dst, seg.dport, seg.src, seg.sport), None)
        st = self._new_state(seg.src, seg.sport, seg.dst, seg.dport, SYN_SENT, events)
        st.client_isn = seg.seq
        st.syn_first_ns = seg.time_ns
        st.syn_frame = seg.number
        st.syn_last_ns, st.syn_last_frame = seg.time_ns, seg.number
        st.attempts = 1
        st.dirs[0].nxt = seg.seq + 1
        if not self._pending:
            self._expiry_at = seg.time_ns + self.syn_timeout_ns
        self._pending[st] = None
        return st

    def _syn_ack(self, seg: Segment, key: tuple, entry, events: list[dict]) -> _State | None:
        if entry is None:
            # The SYN was not captured: the SYN/ACK's sender is the server, no connect event.
            self._recently_closed.pop(key, None)
            self._recently_closed.pop((seg.dst, seg.dport, seg.src, seg.sport), None)
            st = self._new_state(seg.dst, seg.dport, seg.src, seg.sport, OPEN, events)
            st.dirs[0].nxt = seg.ack
            st.dirs[1].nxt = seg.seq + 1
            return st
        st, from_client = entry
        if from_client or st.phase != SYN_SENT:
            return None                             # a retransmitted SYN/ACK
        self._pending.pop(st, None)
        st.phase = OPEN
        st.opened = True
        st.dirs[1].nxt = seg.seq + 1
        st.dirs[0].acked = seg.ack
        if seg.ack != (st.client_isn + 1) & MASK:
            self.diag.skip("SYN/ACKs not acknowledging their SYN", f"packet {seg.number}")
        events.append(self._event("tcp.connect", st, seg.time_ns, seg.number,
                                  handshake_ns=seg.time_ns - st.syn_first_ns, attempts=st.attempts))
        return st

    def _rst(self, st: _State, from_client: bool, seg: Segment, events: list[dict]) -> None:
        if st.phase == SYN_SENT:
            if not from_client:
                events.append(self._event("tcp.refused", st, seg.time_ns, seg.number,
                                          reason="rst", attempts=st.attempts))
            self._forget(st)
            return
        d = st.dirs[not from_client]
        if d.nxt is not None:
            # An RST carries its sender's next sequence number: bytes before it that the
            # capture never showed (a TLS alert sent just before the reset) are a gap.
            upto = d.position(seg.seq)
            if d.fin is not None and upto == d.fin + 1:
                upto = d.fin                       # past its own FIN: not a byte
            if d.nxt < upto <= d.nxt + MAX_RST_SKIP:
                self._skip_to(st, from_client, d, upto, seg.time_ns, events)
        self._flush(st, seg.time_ns, events)
        events.append(self._event("tcp.close", st, seg.time_ns, seg.number,
                                  by="client" if from_client else "server", reason="rst"))
        self._end(st, seg.time_ns, events)

    def _fin(self, st: _State, from_client: bool, seg: Segment, events: list[dict]) -> None:
        d = st.dirs[not from_client]
        if d.fin is None:
            start = d.position(seg.seq) if d.nxt is not None else seg.seq
            d.fin = start + len(seg.payload) + seg.truncated
        if st.fin_by is None:
            # The first FIN is the close (a client that gives up on a hung brick sends it
            # while the brick's kernel still ACKs); the peer may still send on its half.
            st.fin_by = "client" if from_client else "server"
            unacked = None
            if d.acked is not None and d.nxt is not None:
                unacked = max(0, d.nxt - d.position(d.acked))
            events.append(self._event("tcp.close", st, seg.time_ns, seg.number,
                                      by=st.fin_by, reason="fin", half=True,
                                      unacked_bytes=unacked))
        if st.dirs[0].fin is not None and st.dirs[1].fin is not None:
            self._end(st, seg.time_ns, events)

    # ---- reassembly ----------------------------------------------------------------------

    def _data(self, st: _State, from_client: bool, seg: Segment, events: list[dict], seq: int) -> None:
        d = st.dirs[not from_client]
        payload = seg.payload
        if d.nxt is None:
            d.nxt = seq                          # first bytes seen in this direction
        pos = d.nxt + (((seq - d.nxt) + HALF) & MASK) - HALF
        nxt = d.nxt
        if pos <= nxt:
            end = pos + len(payload)
            if end > nxt:                        # new bytes, maybe after a retransmitted part
                fresh = payload[nxt - pos:] if pos < nxt else payload
                self._deliver(st, from_client, seg.time_ns, fresh, events)
                d.nxt = end
            if seg.truncated and end + seg.truncated > d.nxt:
                self._skip_to(st, from_client, d, end + seg.truncated, seg.time_ns, events)
            elif d.ahead:
                self._drain(st, from_client, d, seg.time_ns, events)
            return
        # Ahead of a hole: keep it until the hole fills or is known to be lost.
        if not payload:
            return
        old = d.ahead.get(pos)
        if old is None:
            heapq.heappush(d.starts, pos)
        elif len(old) >= len(payload):
            return
        else:
            d.ahead_bytes -= len(old) + SEGMENT_COST
            self._buffered_total -= len(old) + SEGMENT_COST
        d.ahead[pos] = payload
        d.ahead_bytes += len(payload) + SEGMENT_COST
        self._buffered_total += len(payload) + SEGMENT_COST
        if d.ahead_bytes > self.max_buffered or self._buffered_total > MAX_BUFFERED_TOTAL:
            self._skip_to(st, from_client, d, d.starts[0], seg.time_ns, events)

    def _drain(self, st: _State, from_client: bool, d: _Direction, time_ns: int,
               events: list[dict]) -> None:
        """Deliver buffered bytes that the stream has reached."""
        starts, ahead = d.starts, d.ahead
        while starts and starts[0] <= d.nxt:
            start = heapq.heappop(starts)
            data = ahead.pop(start)
            d.ahead_bytes -= len(data) + SEGMENT_COST
            self._buffered_total -= len(data) + SEGMENT_COST
            end = start + len(data)
            if end > d.nxt:
                self._deliver(st, from_client, time_ns, data[d.nxt - start:], events)
                d.nxt = end

    def _skip_to(self, st: _State, from_client: bool, d: _Direction, upto: int, time_ns: int,
                 events: list[dict]) -> None:
        """Declare every hole before `upto` lost and deliver what was buffered between them."""
        while True:
            self._drain(st, from_client, d, time_ns, events)
            if d.nxt >= upto:
                return
            hole_end = min(upto, d.starts[0]) if d.starts else upto
            missing = hole_end - d.nxt
            st.opened = True
            self.diag.skip("TCP gaps (bytes missing from the capture)", f"conn {st.conn.number}")
            events.append(self._event("tcp.gap", st, time_ns, st.last_frame, missing=missing,
                                      direction="to_server" if from_client else "to_client"))
            out = self.sink.on_gap(st.conn, from_client, time_ns, missing)
            if out:
                events.extend(out)
            d.nxt = hole_end

    def _acked(self, st: _State, from_client: bool, d: _Direction, seg: Segment,
               events: list[dict]) -> None:
        """The receiver acknowledged past what the capture delivered: what lies before is lost."""
        upto = d.position(seg.ack)
        if d.fin is not None and upto == d.fin + 1:
            upto = d.fin                           # the FIN's sequence slot is not a byte
        if d.placed_bare:
            d.placed_bare = False
            if upto == d.nxt + 1 and not d.ahead:
                d.nxt = upto        # the bare segment was a keepalive probe (seq one below)
                return
        if upto > d.nxt:
            self._skip_to(st, from_client, d, upto, seg.time_ns, events)

    def _flush(self, st: _State, time_ns: int, events: list[dict]) -> None:
        """The connection ends: buffered bytes go out, holes before them (and before a FIN)
        become gaps."""
        for from_client, d in ((True, st.dirs[0]), (False, st.dirs[1])):
            if d.nxt is None:
                continue
            upto = max((start + len(data) for start, data in d.ahead.items()), default=d.nxt)
            if d.fin is not None:
                upto = max(upto, d.fin)
            if upto > d.nxt:
                self._skip_to(st, from_client, d, upto, time_ns, events)

    def _deliver(self, st: _State, from_client: bool, time_ns: int, data: bytes,
                 events: list[dict]) -> None:
        st.opened = True
        out = self.sink.on_data(st.conn, from_client, time_ns, data)
        if out:
            events.extend(out)

    # ---- handshake timing, ICMP ----------------------------------------------------------

    def _expire_syns(self, events: list[dict]) -> None:
        limit = self._now - self.syn_timeout_ns
        pending = self._pending
        while pending:
            st = next(iter(pending))
            if st.syn_first_ns > limit:
                self._expiry_at = st.syn_first_ns + self.syn_timeout_ns
                return
            self._timeout(st, events)

    def _timeout(self, st: _State, events: list[dict]) -> None:
        """Report once; the state stays so a late SYN/ACK still becomes tcp.connect."""
        self._pending.pop(st, None)
        st.timed_out = True
        st.reported_attempts = st.attempts
        events.append(self._event("tcp.timeout", st, self._now, st.syn_frame,
                                  attempts=st.attempts, waited_ns=self._now - st.syn_first_ns))

    def _icmp(self, msg: IcmpUnreachable, events: list[dict]) -> None:
        if msg.proto != 6:
            return
        entry = self._conns.get((msg.src, msg.sport, msg.dst, msg.dport))
        if entry is None or not entry[1] or entry[0].phase != SYN_SENT:
            return
        st = entry[0]
        events.append(self._event("tcp.refused", st, msg.time_ns, msg.number, reason="icmp",
                                  icmp_type=msg.icmp_type, icmp_code=msg.icmp_code,
                                  icmp_from=msg.icmp_from, attempts=st.attempts))
        self._forget(st)

    # ---- connection table ----------------------------------------------------------------

    def _new_state(self, cip: str, cport: int, sip: str, sport: int, phase: int,
                   events: list[dict]) -> _State:
        self._numbers += 1
        fwd, rev = (cip, cport, sip, sport), (sip, sport, cip, cport)
        st = _State(Conn(endpoint(cip, cport), endpoint(sip, sport), self._numbers), (fwd, rev), phase)
        self._conns[fwd] = (st, True)
        self._conns[rev] = (st, False)
        self._lru[st] = None
        st.last_frame = self._frame
        if len(self._lru) > self.max_connections:
            oldest = next(iter(self._lru))
            self.diag.skip("connections evicted (too many at once)", f"conn {oldest.conn.number}")
            self._end(oldest, self._now, events)
        return st

    def _open_midstream(self, seg: Segment, events: list[dict]) -> tuple[_State, bool]:
        if sender_is_server(seg.sport, seg.dport):
            return self._new_state(seg.dst, seg.dport, seg.src, seg.sport, OPEN, events), False
        return self._new_state(seg.src, seg.sport, seg.dst, seg.dport, OPEN, events), True

    def _end(self, st: _State, time_ns: int, events: list[dict]) -> None:
        """Drop a connection; the sink hears on_close if it may have seen it."""
        if st.timed_out and st.phase == SYN_SENT and st.attempts > st.reported_attempts:
            events.append(self._event("tcp.timeout", st, time_ns, st.syn_last_frame, final=True,
                                      attempts=st.attempts, waited_ns=time_ns - st.syn_first_ns,
                                      syn_span_ns=st.syn_last_ns - st.syn_first_ns))
        if st.opened:
            self._flush(st, time_ns, events)
            out = self.sink.on_close(st.conn, time_ns)
            if out:
                events.extend(out)
        self._forget(st)
        recent = self._recently_closed
        recent[st.keys[0]] = None
        if len(recent) > MAX_RECENTLY_CLOSED:
            recent.popitem(last=False)

    def _forget(self, st: _State) -> None:
        for key in st.keys:
            if self._conns.get(key, (None,))[0] is st:
                del self._conns[key]
        self._lru.pop(st, None)
        self._pending.pop(st, None)
        for d in st.dirs:
            self._buffered_total -= d.ahead_bytes
            d.ahead_bytes = 0
            d.ahead.clear()
            d.starts.clear()

    def _event(self, kind: str, st: _State, time_ns: int, frame: int, **fields) -> dict:
        return make_event(time_ns, "wire", kind, self.source, src=st.conn.client,
                          dst=st.conn.server, conn=st.conn.number, frame=frame, **fields)
