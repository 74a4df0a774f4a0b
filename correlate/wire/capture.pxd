# C types for capture.py (Cython reads this beside the .py; the .py stays the reference).
# Two reads per packet go through _Input: its buffer and positions are C fields, its reads
# C calls.
cimport cython

cdef class Frame:
    cdef public object time_ns, linktype, data, number, orig_len

cdef class _Input:
    cdef public object _pull
    cdef public bytes _buf
    cdef public Py_ssize_t _pos
    cdef public Py_ssize_t consumed

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t)
    cpdef bytes read(self, Py_ssize_t n)
    @cython.locals(have=Py_ssize_t)
    cpdef bytes _read_slow(self, Py_ssize_t n)
    cpdef bytes peek(self, Py_ssize_t n)

cdef class _RawInput(_Input):
    cpdef bytes read1_for_gzip(self)

cdef class _PcapRecords:
    cdef public _Input inp
    cdef public object diag
    cdef public Py_ssize_t linktype, frac_ns, rec_len, number
    cdef public bint big_endian, done

    @cython.locals(inp=_Input, rec=bytes, data=bytes, big=bint, sec=Py_ssize_t,
                   frac=Py_ssize_t, caplen=Py_ssize_t, wirelen=Py_ssize_t)
    cpdef Frame _next_frame(self)

@cython.locals(b0=Py_ssize_t, b1=Py_ssize_t, b2=Py_ssize_t, b3=Py_ssize_t)
cdef Py_ssize_t _u32(bytes buf, Py_ssize_t at, bint big_endian)
