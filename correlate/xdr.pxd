# C types for xdr.py (Cython reads this beside the .py; the .py stays the reference).
# The read position is a C integer: it only ever moves within the buffer.
cdef class Unpacker:
    cdef public object _buf
    cdef public Py_ssize_t pos
    cdef public Py_ssize_t base
