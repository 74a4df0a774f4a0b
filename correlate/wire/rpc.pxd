# C types for rpc.py (Cython reads this beside the .py; the .py stays the reference): the
# calls waiting for their replies and the per-connection state are C structs.
cdef class _Pending:
    cdef public object prog, vers, proc, info, time_ns, context, later, cost

cdef class _ConnState:
    cdef public dict dirs
    cdef public object pending, pending_bytes, tls
