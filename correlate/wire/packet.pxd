# C types for packet.py (Cython reads this beside the .py; the .py stays the reference).
cdef class Segment:
    cdef public object time_ns, number, src, sport, dst, dport, flags, seq, ack, payload, truncated

cdef class IcmpUnreachable:
    cdef public object time_ns, number, icmp_from, icmp_type, icmp_code
    cdef public object src, sport, dst, dport, proto
