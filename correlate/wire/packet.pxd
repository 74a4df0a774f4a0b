# C types for packet.py (Cython reads this beside the .py; the .py stays the reference).
# The IPv4 and TCP headers are read byte by byte into C integers (bytes indexing compiles to
# a C read); 32-bit words are assembled in Py_ssize_t, never in a C int.
cimport cython
from .capture cimport Frame

cdef class Segment:
    cdef public object time_ns, number, src, sport, dst, dport, flags, seq, ack, payload, truncated

cdef class IcmpUnreachable:
    cdef public object time_ns, number, icmp_from, icmp_type, icmp_code
    cdef public object src, sport, dst, dport, proto

# the address caches: typed, their lookups are C calls, not a method found by name
cdef dict _addr_cache, _addr4_cache

cdef str _addr(bytes raw)
@cython.locals(b0=Py_ssize_t, b1=Py_ssize_t, b2=Py_ssize_t, b3=Py_ssize_t)
cdef Py_ssize_t _word(bytes data, Py_ssize_t at)
cdef str _addr4(Py_ssize_t packed)

@cython.locals(vihl=Py_ssize_t, ihl=Py_ssize_t, frag=Py_ssize_t, total=Py_ssize_t,
               end=Py_ssize_t, start=Py_ssize_t, proto=Py_ssize_t)
cdef object _ipv4(Frame frame, bytes data, Py_ssize_t off, object diag)

@cython.locals(b0=Py_ssize_t, b1=Py_ssize_t, b2=Py_ssize_t, b3=Py_ssize_t, seq=Py_ssize_t,
               ack=Py_ssize_t, hlen=Py_ssize_t, pstart=Py_ssize_t, truncated=Py_ssize_t,
               payload=bytes)
cdef object _tcp(Frame frame, bytes data, Py_ssize_t start, Py_ssize_t end, str src, str dst,
                 object diag)
