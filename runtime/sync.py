"""Typed messages between the launcher (P) and the container side (I, then C).

One SOCK_SEQPACKET socketpair, created with SOCK_CLOEXEC so the command never inherits it. A message is one
datagram: a kind byte string, then NUL-separated fields. Unexpected kinds are errors. An error raised on the
container side travels back as an ERROR message with its class, exit code, message, fix and errno, and is raised
again in the launcher, so that only run.py's main prints it. A raw OSError (a call that is not wrapped) becomes a
SetupError `<step> <object>: <strerror>`, the step being what the container side was doing.

Sequence (-> P to child, <- child to P):
    <- USERNS            I has unshared its user namespace: write the maps, place it in the cgroup
    -> MAPPED            maps written
    <- CHILD pid         I unshared the other namespaces and forked C (PID 1), whose host PID this is
    <- SETUP [fd]        C mounted, pivoted, named itself; in tty mode it passes the pty master fd
    -> GO                network ready (and terminal set up): drop privileges and exec
    <- ERROR class code message fix errno    any stage, instead of the expected message
    <- EXIT code | SIGNAL n   I: how C ended
"""
import os
import _socket

from runtime import errors

USERNS = b"USERNS"
MAPPED = b"MAPPED"
CHILD = b"CHILD"
SETUP = b"SETUP"
GO = b"GO"
ERROR = b"ERROR"
EXIT = b"EXIT"
SIGNAL = b"SIGNAL"

_MAX = 65536


class Channel:
    def __init__(self, sock):
        self.sock = sock

    @classmethod
    def pair(cls):
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        return cls(a), cls(b)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def send(self, kind, *fields, fds=()):
        data = b"\0".join((kind,) + tuple(os.fsencode(str(f)) for f in fields))
        if fds:
            import struct
            anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            self.sock.sendmsg([data], anc)
        else:
            self.sock.send(data)

    def recv(self):
        """Return (kind, fields, fds); kind is None at EOF (the other side is gone)."""
        data, anc, _flags, _addr = self.sock.recvmsg(_MAX, 64)
        fds = []
        for level, typ, payload in anc:
            if level == _socket.SOL_SOCKET and typ == _socket.SCM_RIGHTS:
                import struct
                n = len(payload) // 4
                fds.extend(struct.unpack(f"{n}i", payload[:4 * n]))
        if not data:
            return None, [], fds
        parts = data.split(b"\0")
        return parts[0], [os.fsdecode(p) for p in parts[1:]], fds

    def expect(self, kind, stage):
        """Receive one message of `kind`; re-raise a forwarded error; anything else is a protocol error."""
        got, fields, fds = self.recv()
        if got == kind:
            return fields, fds
        for fd in fds:
            os.close(fd)
        if got == ERROR:
            raise error_from_fields(fields)
        if got is None:
            raise errors.SetupError(f"{stage}: the container process ended unexpectedly")
        raise errors.SetupError(f"{stage}: unexpected message {got.decode(errors='replace')}")

    def send_status(self, status):
        """EXIT code or SIGNAL number of a waitpid status: how the container's (or exec's) process ended.
        The host side may be gone already: nothing to tell then."""
        try:
            if os.WIFSIGNALED(status):
                self.send(SIGNAL, os.WTERMSIG(status))
            else:
                self.send(EXIT, os.WEXITSTATUS(status))
        except OSError:
            pass

    def send_error(self, exc, step=None):
        """Send `exc` as an ERROR message; returns the exit code the sending process should exit with.
        `step` names what was being done, for an OSError that does not say it."""
        err = getattr(exc, "errno", None)
        if isinstance(exc, errors.PirunError):
            name, code, message, fix = type(exc).__name__, exc.exit_code, exc.message, exc.fix or ""
        elif isinstance(exc, OSError):
            obj = exc.filename2 if exc.filename2 is not None else exc.filename
            where = " ".join(str(w) for w in (step or "setup", obj) if w is not None)
            name, code, message, fix = "SetupError", errors.EXIT_RUNTIME, f"{where}: {exc.strerror or exc}", ""
        else:
            name, code, message, fix = "SetupError", errors.EXIT_RUNTIME, f"internal error: {exc!r}", ""
            err = None
        try:
            self.send(ERROR, name, code, message, fix, err or "")
        except OSError:
            pass
        return code


def error_from_fields(fields):
    """The exception an ERROR message describes (a PirunError subclass, its errno kept)."""
    name, code, message, fix, err = (fields + ["", "125", "unknown error", "", ""][len(fields):])[:5]
    cls = getattr(errors, name, errors.SetupError)
    if not (isinstance(cls, type) and issubclass(cls, errors.PirunError)):
        cls = errors.SetupError
    if cls is errors.ExecError:
        exc = cls(message, fix or None, exit_code=int(code))
    else:
        exc = cls(message, fix or None)
    if err.isdigit():
        exc.errno = int(err)
    return exc
