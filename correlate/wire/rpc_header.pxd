# C types for rpc_header.py (Cython reads this beside the .py; the .py stays the reference):
# one header per record, its fields C struct members instead of a dict's.
cdef class CallHeader:
    cdef public object xid, rpcvers, prog, vers, proc, cred_flavor, cred_body, verf_flavor
    cdef public object body_offset

cdef class ReplyHeader:
    cdef public object xid, reply_status, accept_status, reject_status, auth_status, mismatch
    cdef public object body_offset
