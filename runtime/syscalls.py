"""The container side's system calls, behind one object (youki's `Syscall` trait).

`runtime.init.Init` receives a `Syscalls` and makes through it every call that changes the process, its mount
table or a file: mount, umount2, pivot_root, chdir, mkdir, symlink, the files it creates or writes (bind
targets, generated /etc files, sysctls), sethostname, bringing up lo, signal dispositions, setsid, the
terminal, closing inherited fds, prctl and capset, the seccomp filter, execve and _exit. Queries (lstat,
statvfs, the O_PATH lookups of `fs.open_in_root`) go to the filesystem directly, as do the --init reaper's
fork, waits and signal forwarding (what it execs goes through here). Unit tests pass a recording double
instead (tests/unit/recording_syscalls.py) and assert the order of the calls without privileges; a new
effect on the container side is a new method here and there.

Every method raises a SetupError naming the step, the object and the errno (`mount proc on /proc: Operation not
permitted`); `shown` names the object when the path is a /proc/self/fd/N handle or says less than the step.
Everything here runs after pivot_root too, so it imports only what `init._preload` has loaded.
"""
import os
import _signal

from runtime import libc
from runtime.errors import SetupError, os_error


class Syscalls:
    """The real calls. Stateless; the bound functions cost no more than calling libc directly."""

    mount = staticmethod(libc.mount)            # (source, target, fstype, flags, data=None, step=, shown=)
    umount2 = staticmethod(libc.umount2)        # (target, flags, step=)
    pivot_root = staticmethod(libc.pivot_root)  # (new_root, put_old)
    prctl = staticmethod(libc.prctl)            # (option, arg2=0, arg3=0, arg4=0, arg5=0, step=)
    capset = staticmethod(libc.capset)          # (effective, permitted, inheritable)
    set_name = staticmethod(libc.set_name)      # PR_SET_NAME, best effort
    setsid = staticmethod(os.setsid)
    execve = staticmethod(os.execve)            # raises OSError: exec_command sorts the errnos out
    exit = staticmethod(os._exit)

    @staticmethod
    def chdir(path, step="chdir", fix=None):
        try:
            os.chdir(path)
        except OSError as e:
            raise os_error(step, path, e.errno, fix) from None

    @staticmethod
    def mkdir(path, mode, step="mkdir"):
        try:
            os.mkdir(path, mode)
        except OSError as e:
            raise os_error(step, path, e.errno) from None

    @staticmethod
    def symlink(target, path, step="symlink"):
        try:
            os.symlink(target, path)
        except OSError as e:
            raise os_error(step, path, e.errno) from None

    @staticmethod
    def write_new(path, text, mode, step="create", shown=None):
        """Create (or truncate) `path` with `text`: bind targets and generated files."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                if text:
                    os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise os_error(step, shown or path, e.errno) from None

    @staticmethod
    def write_existing(path, text, step="write", shown=None):
        """One write to an existing file (a sysctl): no create, no truncate."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise os_error(step, shown or path, e.errno) from None

    @staticmethod
    def unlink(path, step="unlink"):
        try:
            os.unlink(path)
        except OSError as e:
            raise os_error(step, path, e.errno) from None

    @staticmethod
    def sethostname(name):
        import _socket
        try:
            _socket.sethostname(name)
        except OSError as e:
            raise os_error("sethostname", name, e.errno) from None

    @staticmethod
    def loopback_up():
        """`ip link set lo up` with two ioctls (no pyroute2, no subprocess)."""
        import fcntl
        import struct
        import _socket
        SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            req = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
        except OSError as e:
            raise os_error("bring up", "lo", e.errno) from None
        finally:
            s.close()

    @staticmethod
    def reset_signals():
        """Default dispositions for every signal: Python ignores SIGPIPE and SIGXFSZ, and an ignored signal
        stays ignored across execve (a classic container bug)."""
        for sig in range(1, _signal.NSIG):
            if sig in (_signal.SIGKILL, _signal.SIGSTOP):
                continue
            try:
                _signal.signal(sig, _signal.SIG_DFL)
            except (OSError, ValueError, RuntimeError):
                pass

    @staticmethod
    def open_pty():
        """(master, slave) of the container's own devpts instance: the command's terminal is /dev/pts/0."""
        import fcntl
        import struct
        TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431
        try:
            master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
            slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
        except OSError as e:
            raise SetupError(f"open a pseudo-terminal: {e.strerror}") from None
        return master, slave

    @staticmethod
    def attach_terminal(slave):
        """Make `slave` the controlling terminal and the command's stdin, stdout and stderr."""
        import fcntl
        import termios
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)

    @staticmethod
    def switch_user(uid, gid):
        """-u / the image's User: setgroups, setgid, setuid (as podman: the bounding set stays, a non-root user
        has no permitted or effective capabilities). Returns True when the uid is not 0."""
        try:
            try:
                os.setgroups([gid])
            except PermissionError:
                pass                     # setgroups is denied in a user namespace with a single ID mapping
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            raise SetupError(f"switch to user {uid}:{gid}: {e.strerror}",
                             fix="choose a user and group mapped in the container (your subordinate IDs)") from None
        return uid != 0

    @staticmethod
    def rearm_parent_death(parent_fd):
        """A change of credentials (setuid, setgid) clears PR_SET_PDEATHSIG: set it again, then make sure the
        parent did not die in between: `parent_fd` is the read end of a pipe whose write end only the parent
        holds, so EOF there means it is gone, and so must we be."""
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal again")
        if parent_fd is None:
            return
        os.set_blocking(parent_fd, False)
        try:
            gone = os.read(parent_fd, 1) == b""
        except BlockingIOError:
            gone = False
        os.close(parent_fd)
        if gone:
            os._exit(128 + _signal.SIGKILL)

    @staticmethod
    def close_fds(*keep):
        """Close every fd above stderr but those in `keep` (the sync channel, the parent pipe: close-on-exec)."""
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 0x7FFFFFFF)          # one close_range(2); fds above 65535 exist (hard limit 524288)

    @staticmethod
    def install_seccomp():
        import sys
        sys.modules["runtime.seccomp"].install()     # imported by init._preload, before pivot_root
