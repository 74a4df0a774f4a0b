"""The C side of libgfapi for ctypes: structures and the signatures of the calls the lab's
client uses (Gluster 10 exports the GFAPI_6.0 versions by default, which take the extra
`struct glfs_stat *prestat, *poststat` arguments; the client passes NULL for them)."""
from __future__ import annotations

import ctypes
import platform


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _stat_struct():
    """The kernel's `struct stat` for this architecture (glfs_stat fills the libc layout)."""
    ts = Timespec
    if platform.machine() == "x86_64":
        fields = [("st_dev", ctypes.c_ulong), ("st_ino", ctypes.c_ulong),
                  ("st_nlink", ctypes.c_ulong), ("st_mode", ctypes.c_uint),
                  ("st_uid", ctypes.c_uint), ("st_gid", ctypes.c_uint), ("_pad0", ctypes.c_int),
                  ("st_rdev", ctypes.c_ulong), ("st_size", ctypes.c_long),
                  ("st_blksize", ctypes.c_long), ("st_blocks", ctypes.c_long),
                  ("st_atim", ts), ("st_mtim", ts), ("st_ctim", ts),
                  ("_unused", ctypes.c_long * 3)]
    else:  # the generic layout (aarch64, riscv64)
        fields = [("st_dev", ctypes.c_ulong), ("st_ino", ctypes.c_ulong),
                  ("st_mode", ctypes.c_uint), ("st_nlink", ctypes.c_uint),
                  ("st_uid", ctypes.c_uint), ("st_gid", ctypes.c_uint),
                  ("st_rdev", ctypes.c_ulong), ("_pad1", ctypes.c_ulong),
                  ("st_size", ctypes.c_long), ("st_blksize", ctypes.c_int),
                  ("_pad2", ctypes.c_int), ("st_blocks", ctypes.c_long),
                  ("st_atim", ts), ("st_mtim", ts), ("st_ctim", ts),
                  ("_unused", ctypes.c_int * 2)]
    return type("Stat", (ctypes.Structure,), {"_fields_": fields})


StatStruct = _stat_struct()


class Flock(ctypes.Structure):
    """struct flock (64-bit off_t)."""
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_long), ("l_len", ctypes.c_long), ("l_pid", ctypes.c_int)]


class Statvfs(ctypes.Structure):
    _fields_ = [("f_bsize", ctypes.c_ulong), ("f_frsize", ctypes.c_ulong),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_favail", ctypes.c_ulong),
                ("f_fsid", ctypes.c_ulong), ("f_flag", ctypes.c_ulong),
                ("f_namemax", ctypes.c_ulong), ("_spare", ctypes.c_int * 6)]


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_ulong), ("d_off", ctypes.c_long),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_p, _int, _str, _size, _ssize, _off = (ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                       ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_long)
_uint = ctypes.c_uint

SIGNATURES = {
    "glfs_new": ([_str], _p),
    "glfs_set_volfile_server": ([_p, _str, _str, _int], _int),
    "glfs_set_logging": ([_p, _str, _int], _int),
    "glfs_set_xlator_option": ([_p, _str, _str, _str], _int),
    "glfs_init": ([_p], _int),
    "glfs_fini": ([_p], _int),
    "glfs_creat": ([_p, _str, _int, _uint], _p),
    "glfs_open": ([_p, _str, _int], _p),
    "glfs_close": ([_p], _int),
    "glfs_write": ([_p, _str, _size, _int], _ssize),
    "glfs_read": ([_p, _str, _size, _int], _ssize),
    "glfs_pwrite": ([_p, _str, _size, _off, _int, _p, _p], _ssize),
    "glfs_pread": ([_p, _str, _size, _off, _int, _p], _ssize),
    "glfs_fsync": ([_p, _p, _p], _int),
    "glfs_fdatasync": ([_p, _p, _p], _int),
    "glfs_ftruncate": ([_p, _off, _p, _p], _int),
    "glfs_truncate": ([_p, _str, _off], _int),
    "glfs_lseek": ([_p, _off, _int], _off),
    "glfs_fallocate": ([_p, _int, _off, _size], _int),
    "glfs_discard": ([_p, _off, _size], _int),
    "glfs_zerofill": ([_p, _off, _off], _int),
    "glfs_posix_lock": ([_p, _int, ctypes.POINTER(Flock)], _int),
    "glfs_utimens": ([_p, _str, ctypes.POINTER(Timespec)], _int),
    "glfs_futimens": ([_p, ctypes.POINTER(Timespec)], _int),
    "glfs_stat": ([_p, _str, ctypes.POINTER(StatStruct)], _int),
    "glfs_lstat": ([_p, _str, ctypes.POINTER(StatStruct)], _int),
    "glfs_fstat": ([_p, ctypes.POINTER(StatStruct)], _int),
    "glfs_statvfs": ([_p, _str, ctypes.POINTER(Statvfs)], _int),
    "glfs_access": ([_p, _str, _int], _int),
    "glfs_chmod": ([_p, _str, _uint], _int),
    "glfs_fchmod": ([_p, _uint], _int),
    "glfs_chown": ([_p, _str, _uint, _uint], _int),
    "glfs_unlink": ([_p, _str], _int),
    "glfs_mkdir": ([_p, _str, _uint], _int),
    "glfs_rmdir": ([_p, _str], _int),
    "glfs_mknod": ([_p, _str, _uint, ctypes.c_ulong], _int),
    "glfs_rename": ([_p, _str, _str], _int),
    "glfs_link": ([_p, _str, _str], _int),
    "glfs_symlink": ([_p, _str, _str], _int),
    "glfs_readlink": ([_p, _str, _p, _size], _int),
    "glfs_setxattr": ([_p, _str, _str, _p, _size, _int], _int),
    "glfs_getxattr": ([_p, _str, _str, _p, _size], _ssize),
    "glfs_listxattr": ([_p, _str, _p, _size], _ssize),
    "glfs_removexattr": ([_p, _str, _str], _int),
    "glfs_fsetxattr": ([_p, _str, _p, _size, _int], _int),
    "glfs_fgetxattr": ([_p, _str, _p, _size], _ssize),
    "glfs_opendir": ([_p, _str], _p),
    "glfs_readdir": ([_p], ctypes.POINTER(Dirent)),
    "glfs_closedir": ([_p], _int),
}
