"""The cgroup filesystem: every read, write, mkdir and rmdir of the manager goes through here.

`write()` is THE one function that writes a cgroup file; its error names the path, the value and the errno:
    cgroup write '16777216' to /sys/fs/cgroup/.../memory.max: Permission denied (EACCES)
Tests substitute a `CgroupFS` subclass that emulates the kernel's rules on a temporary directory tree.
"""
import os

from runtime.errors import CgroupError


def oserror_text(e):
    import errno
    name = errno.errorcode.get(e.errno, str(e.errno))
    return f"{os.strerror(e.errno)} ({name})" if e.errno else str(e)


def write_error(path, data, e, fix=None):
    """The CgroupError of a failed write: path, value, errno (kept as .errno for callers that branch on it)."""
    err = CgroupError(f"cgroup write {_show(data)} to {path}: {oserror_text(e)}", fix)
    err.errno = e.errno
    return err


class CgroupFS:
    """The real cgroup2 filesystem. Paths are absolute host paths."""

    def write(self, path, value, fix=None):
        data = value if isinstance(value, bytes) else str(value).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise write_error(path, data, e, fix) from None

    def read(self, path):
        """The file's text, or None when it does not exist (a controller not enabled, an older kernel)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            chunks = []
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                chunks.append(b)
        finally:
            os.close(fd)
        return b"".join(chunks).decode()

    def mkdir(self, path, fix=None):
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            raise CgroupError(f"cgroup mkdir {path}: {oserror_text(e)}", fix) from None

    def rmdir(self, path):
        """Remove a cgroup directory; returns the OSError (not raised) so cleanup can go on and decide."""
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return e
        return None

    def listdir(self, path):
        try:
            return os.listdir(path)
        except OSError:
            return []

    def writable(self, path):
        return os.access(path, os.W_OK)

    def isdir(self, path):
        return os.path.isdir(path)


def _show(data):
    text = data.decode(errors="replace")
    return repr(text)


def keyed(text):
    """A flat keyed file (memory.events, cpu.stat, cgroup.events) -> {key: int}."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def single(text):
    """A single-value file ('max' or a number) -> int, 'max', or None."""
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        return None
