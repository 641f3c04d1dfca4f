"""Run a function in a child process inside a new user namespace with the user's full subuid/subgid map.

The map is written by the same code a container's launcher uses (runtime.idmap: newuidmap/newgidmap), so the
IDs a layer is unpacked with are the IDs a container sees. The child is ordinary code: root only inside its
namespace, it can create and remove files of every mapped ID and nothing else. It dies with its parent
(PR_SET_PDEATHSIG). A PirunError raised in the child is raised again in the parent; the function's result
(a str) is returned.
"""
import os
import _signal

from runtime import libc
from runtime.errors import PirunError, SetupError

_KINDS = {}


def _kind(name):
    if not _KINDS:
        from runtime import errors
        for n in dir(errors):
            c = getattr(errors, n)
            if isinstance(c, type) and issubclass(c, PirunError):
                _KINDS[n] = c
    return _KINDS.get(name, SetupError)


def run(fn, *args, mount_ns=False):
    """fn(*args) -> str, in the namespace; returns its str. With mount_ns, the child also gets a mount
    namespace of its own (for test mounts)."""
    return start(fn, *args, mount_ns=mount_ns).wait()


class Child:
    """A started user-namespace child: wait() for its result; kill() it."""

    def __init__(self, pid, res_r):
        self.pid, self.res_r, self.chunks, self.status = pid, res_r, [], None

    def readable(self):
        return self.res_r

    def kill(self):
        if self.status is None:
            try:
                os.kill(self.pid, _signal.SIGKILL)
            except OSError:
                pass
            self.wait(raise_error=False)

    def wait(self, raise_error=True):
        if self.status is None:
            try:
                while True:
                    b = os.read(self.res_r, 65536)
                    if not b:
                        break
                    self.chunks.append(b)
            finally:
                os.close(self.res_r)
                _, self.status = os.waitpid(self.pid, 0)
        data = b"".join(self.chunks)
        if data[:1] == b"R":
            return data[1:].decode(errors="surrogateescape")
        if not raise_error:
            return None
        if data[:1] == b"E":
            kind, message, fix = (data[1:].decode(errors="replace").split("\0") + ["", ""])[:3]
            raise _kind(kind)(message, fix or None)
        raise SetupError(f"user-namespace helper ended with status {os.waitstatus_to_exitcode(self.status)}")


def start(fn, *args, mount_ns=False, keep=()):
    """Start fn(*args) in a user-namespace child and return a Child once its ID maps are written. `keep`:
    fds of the parent to close in the child (the other ends of pipes it talks through)."""
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:                                                  # child
        code = 1
        try:
            os.close(res_r)
            os.close(go_w)
            for fd in keep:
                os.close(fd)
            libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            if os.getppid() != parent:
                os._exit(1)
            flags = libc.CLONE_NEWUSER | (libc.CLONE_NEWNS if mount_ns else 0)
            libc.unshare(flags)
            os.write(res_w, b"U")
            if os.read(go_r, 1) != b"G":
                os._exit(1)
            out = fn(*args)
            _send(res_w, b"R" + (out or "").encode(errors="surrogateescape"))
            code = 0
        except PirunError as e:
            _send(res_w, b"E" + "\0".join((type(e).__name__, e.message, e.fix or "")).encode(errors="replace"))
        except OSError as e:
            _send(res_w, b"E" + "\0".join(("SetupError", f"{e.filename or ''}: {e.strerror}".lstrip(": "),
                                           "")).encode(errors="replace"))
        except BaseException as e:                                # noqa: BLE001 - a bug: one line still
            _send(res_w, b"E" + f"SetupError\0internal error: {type(e).__name__}: {e}\0".encode(errors="replace"))
        finally:
            os._exit(code)
    os.close(res_w)
    os.close(go_r)
    child = Child(pid, res_r)
    try:
        first = os.read(res_r, 1)
        if first != b"U":
            child.wait(raise_error=False)
            raise SetupError("create a user namespace: the helper process ended", fix=_userns_fix())
        from runtime import idmap
        import pwd
        uid, gid = os.getuid(), os.getgid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        idmap.write_maps(pid, uid, gid, user)        # a single mapping warns nowhere here: chown errors say it
        os.write(go_w, b"G")
    except BaseException:
        child.kill()
        raise
    finally:
        os.close(go_w)
    return child


def _send(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _userns_fix():
    from runtime.child import USERNS_FIX
    return USERNS_FIX


def mapped_ids():
    """(uids, gids) mapped in this process's user namespace: lists of (inside, count)."""
    out = []
    for name in ("uid_map", "gid_map"):
        ranges = []
        with open(f"/proc/self/{name}") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                ranges.append((inside, count))
        out.append(ranges)
    return out[0], out[1]
