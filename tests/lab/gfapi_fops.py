"""The less common libgfapi calls of the lab client (tests/lab/gfapi.py's Client inherits
them): each issues one GlusterFS fop or a short, fixed series of them."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from .gfapi_types import Flock, StatStruct, Statvfs


@dataclass
class Stat:
    size: int
    mode: int
    atime: int
    atime_nsec: int
    mtime: int
    mtime_nsec: int


def stat_of(st) -> Stat:
    return Stat(size=st.st_size, mode=st.st_mode,
                atime=st.st_atim.tv_sec, atime_nsec=st.st_atim.tv_nsec,
                mtime=st.st_mtim.tv_sec, mtime_nsec=st.st_mtim.tv_nsec)


class MoreFops:
    """Needs `self.lib`, `self.fs`, `self._check(call, ret)` and `self._fail(call)`."""

    def pwrite(self, fd, data: bytes, offset: int) -> int:
        return self._check("glfs_pwrite",
                           self.lib.glfs_pwrite(fd, data, len(data), offset, 0, None, None))

    def pread(self, fd, size: int, offset: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = self._check("glfs_pread", self.lib.glfs_pread(fd, buf, size, offset, 0, None))
        return buf.raw[:n]

    def fsync(self, fd) -> None:
        self._check("glfs_fsync", self.lib.glfs_fsync(fd, None, None))

    def fdatasync(self, fd) -> None:
        self._check("glfs_fdatasync", self.lib.glfs_fdatasync(fd, None, None))

    def ftruncate(self, fd, length: int) -> None:
        self._check("glfs_ftruncate", self.lib.glfs_ftruncate(fd, length, None, None))

    def truncate(self, path: str, length: int) -> None:
        self._check("glfs_truncate", self.lib.glfs_truncate(self.fs, path.encode(), length))

    def lseek(self, fd, offset: int, whence: int) -> int:
        return self._check("glfs_lseek", self.lib.glfs_lseek(fd, offset, whence))

    def fallocate(self, fd, offset: int, length: int, keep_size: int = 0) -> None:
        self._check("glfs_fallocate", self.lib.glfs_fallocate(fd, keep_size, offset, length))

    def discard(self, fd, offset: int, length: int) -> None:
        self._check("glfs_discard", self.lib.glfs_discard(fd, offset, length))

    def zerofill(self, fd, offset: int, length: int) -> None:
        self._check("glfs_zerofill", self.lib.glfs_zerofill(fd, offset, length))

    def posix_lock(self, fd, cmd: int, lock_type: int, start: int = 0, length: int = 0) -> None:
        """cmd F_SETLK / F_SETLKW / F_GETLK (fcntl), lock_type F_RDLCK / F_WRLCK / F_UNLCK."""
        lock = Flock(l_type=lock_type, l_whence=os.SEEK_SET, l_start=start, l_len=length)
        self._check("glfs_posix_lock", self.lib.glfs_posix_lock(fd, cmd, ctypes.byref(lock)))

    def fstat(self, fd) -> Stat:
        st = StatStruct()
        self._check("glfs_fstat", self.lib.glfs_fstat(fd, ctypes.byref(st)))
        return stat_of(st)

    def lstat(self, path: str) -> Stat:
        st = StatStruct()
        self._check("glfs_lstat", self.lib.glfs_lstat(self.fs, path.encode(), ctypes.byref(st)))
        return stat_of(st)

    def statvfs(self, path: str = "/") -> dict:
        sv = Statvfs()
        self._check("glfs_statvfs", self.lib.glfs_statvfs(self.fs, path.encode(), ctypes.byref(sv)))
        return {"bsize": sv.f_bsize, "blocks": sv.f_blocks, "bfree": sv.f_bfree,
                "bavail": sv.f_bavail, "files": sv.f_files, "ffree": sv.f_ffree}

    def access(self, path: str, mode: int = os.R_OK) -> None:
        self._check("glfs_access", self.lib.glfs_access(self.fs, path.encode(), mode))

    def chmod(self, path: str, mode: int) -> None:
        self._check("glfs_chmod", self.lib.glfs_chmod(self.fs, path.encode(), mode))

    def fchmod(self, fd, mode: int) -> None:
        self._check("glfs_fchmod", self.lib.glfs_fchmod(fd, mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._check("glfs_chown", self.lib.glfs_chown(self.fs, path.encode(), uid, gid))

    def rmdir(self, path: str) -> None:
        self._check("glfs_rmdir", self.lib.glfs_rmdir(self.fs, path.encode()))

    def mknod(self, path: str, mode: int, dev: int = 0) -> None:
        self._check("glfs_mknod", self.lib.glfs_mknod(self.fs, path.encode(), mode, dev))

    def rename(self, old: str, new: str) -> None:
        self._check("glfs_rename", self.lib.glfs_rename(self.fs, old.encode(), new.encode()))

    def link(self, old: str, new: str) -> None:
        self._check("glfs_link", self.lib.glfs_link(self.fs, old.encode(), new.encode()))

    def symlink(self, target: str, path: str) -> None:
        self._check("glfs_symlink", self.lib.glfs_symlink(self.fs, target.encode(), path.encode()))

    def readlink(self, path: str) -> str:
        buf = ctypes.create_string_buffer(4096)
        n = self._check("glfs_readlink", self.lib.glfs_readlink(self.fs, path.encode(), buf, 4096))
        return buf.raw[:n].decode(errors="replace")

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self._check("glfs_setxattr", self.lib.glfs_setxattr(
            self.fs, path.encode(), name.encode(), value, len(value), flags))

    def getxattr(self, path: str, name: str, size: int = 4096) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = self._check("glfs_getxattr",
                        self.lib.glfs_getxattr(self.fs, path.encode(), name.encode(), buf, size))
        return buf.raw[:n]

    def listxattr(self, path: str, size: int = 4096) -> list[str]:
        buf = ctypes.create_string_buffer(size)
        n = self._check("glfs_listxattr", self.lib.glfs_listxattr(self.fs, path.encode(), buf, size))
        return [x.decode(errors="replace") for x in buf.raw[:n].split(b"\0") if x]

    def removexattr(self, path: str, name: str) -> None:
        self._check("glfs_removexattr",
                    self.lib.glfs_removexattr(self.fs, path.encode(), name.encode()))

    def fsetxattr(self, fd, name: str, value: bytes, flags: int = 0) -> None:
        self._check("glfs_fsetxattr",
                    self.lib.glfs_fsetxattr(fd, name.encode(), value, len(value), flags))

    def fgetxattr(self, fd, name: str, size: int = 4096) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = self._check("glfs_fgetxattr", self.lib.glfs_fgetxattr(fd, name.encode(), buf, size))
        return buf.raw[:n]

    def listdir(self, path: str) -> list[str]:
        """glfs_opendir + glfs_readdir until the end + glfs_closedir (OPENDIR, READDIR(P))."""
        d = self.lib.glfs_opendir(self.fs, path.encode())
        if not d:
            self._fail("glfs_opendir")
        names = []
        try:
            while True:
                ctypes.set_errno(0)
                entry = self.lib.glfs_readdir(d)
                if not entry:
                    if ctypes.get_errno():
                        self._fail("glfs_readdir")
                    return names
                names.append(entry.contents.d_name.decode(errors="replace"))
        finally:
            self.lib.glfs_closedir(d)
