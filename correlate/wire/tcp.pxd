# C types for tcp.py (Cython reads this beside the .py; the .py stays the reference).
# An attribute added to one of these classes in the .py is declared here too
# (tests/test_hotpath.py checks).
# Stream positions stay Python ints (unbounded by design); the per-connection state becomes
# C structs, and the per-segment calls C calls.
cimport cython
from .capture cimport Frame
from .packet cimport Segment

cdef class _Direction:
    cdef public object nxt
    cdef public dict ahead
    cdef public list starts
    cdef public object ahead_bytes
    cdef public object fin
    cdef public object acked
    cdef public bint placed_bare

cdef class _State:
    cdef public object conn
    cdef public tuple keys
    cdef public object phase
    cdef public tuple dirs
    cdef public object client_isn, syn_first_ns, syn_frame, attempts
    cdef public object syn_last_ns, syn_last_frame, reported_attempts
    cdef public bint timed_out, opened
    cdef public object fin_by
    cdef public object last_frame

cdef class TcpTracker:
    cdef public object source, sink, diag, syn_timeout_ns, max_connections, max_buffered
    cdef public dict _conns
    cdef public object _lru, _pending, _recently_closed
    cdef public object _buffered_total, _numbers, _now, _expiry_at, _frame

    cpdef list feed(self, Frame frame)
    cpdef list tick(self, time_ns)
    cpdef list feed_parsed(self, Frame frame, pkt)
    @cython.locals(st=_State, from_client=bint, other=_Direction, d=_Direction)
    cpdef _segment(self, Segment seg, list events)
    cpdef _data(self, _State st, bint from_client, Segment seg, list events, seq)
    cpdef _deliver(self, _State st, bint from_client, time_ns, data, list events)
