"""Starting a network helper process from P, and keeping its stderr for the error message.

Hot path: only `os` and the built-in `_signal`; no subprocess (7 ms to import), no ctypes in P.
"""
import os
import _signal

from runtime.errors import NetworkError

# Dispositions the helper must not inherit from P: Python ignores SIGPIPE and SIGXFSZ; the launcher may ignore
# or block terminal signals while it relays them.
_SIGDEF = tuple(getattr(_signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT",
                                                 "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCHLD", "SIGUSR1",
                                                 "SIGUSR2", "SIGALRM", "SIGWINCH"))
ALL_SIGNALS = tuple(s for s in _signal.valid_signals() if s not in (_signal.SIGKILL, _signal.SIGSTOP))


def null_fd():
    return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


def log_fd():
    """An anonymous file (O_TMPFILE) for a helper's stderr: it never blocks the helper (a pipe could fill up
    while nobody reads) and nothing is left on disk. Read back with read_log() when reporting a failure."""
    for d in (os.environ.get("XDG_RUNTIME_DIR"), "/tmp", "/var/tmp"):
        if not d:
            continue
        try:
            return os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
    return null_fd()


def read_log(fd, limit=4096):
    """The helper's last meaningful stderr line(s), joined into one line."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Failed to send", "WARNING: Support for seccomp",
                                                             "sent tapfd", "received tapfd"))]
    return "; ".join(lines[-3:])


def spawn(argv, pass_fds=(), stdin=None, stdout=None, stderr=None, setsid=True):
    """posix_spawn argv[0] with pass_fds semantics done by hand.

    Python creates every fd close-on-exec, so the helper inherits only 0, 1, 2 and `pass_fds`: each of those
    gets a dup2(fd, fd) file action, which clears FD_CLOEXEC in the child only (glibc >= 2.29). stdin/out/err
    default to /dev/null, never the container's terminal. setsid: the helper gets its own session, so terminal
    signals (^C, ^Z, hangup) meant for the container never reach it; its lifetime is tied to P by other means.
    """
    nul = None
    if stdin is None or stdout is None or stderr is None:
        nul = null_fd()
    actions = [(os.POSIX_SPAWN_DUP2, stdin if stdin is not None else nul, 0),
               (os.POSIX_SPAWN_DUP2, stdout if stdout is not None else nul, 1),
               (os.POSIX_SPAWN_DUP2, stderr if stderr is not None else nul, 2)]
    for fd in pass_fds:
        actions.append((os.POSIX_SPAWN_DUP2, fd, fd))
    try:
        return os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=setsid,
                              setsigmask=(), setsigdef=_SIGDEF)
    except OSError as e:
        raise NetworkError(f"start {argv[0]}: {e.strerror}", fix=f"check that {argv[0]} is installed") from None
    finally:
        if nul is not None:
            os.close(nul)


def spawn_tied(argv, pass_fd, stderr, tool):
    """fork + exec argv as a direct child of P that the kernel SIGKILLs the moment P dies (PR_SET_PDEATHSIG),
    for helpers that have no exit fd (pasta). Returns its PID.

    P blocks all signals and forks a tiny child K, which resets every handler to SIG_DFL, starts its own
    session, sets PR_SET_PDEATHSIG(SIGKILL), checks that P is still its parent (closing the race with P dying
    before the prctl), and execs argv with stdin/stdout on /dev/null, stderr on `stderr` and `pass_fd`
    inherited. PDEATHSIG fires when the *thread* that forked K exits: call this from P's main thread.
    """
    parent = os.getpid()
    nul = null_fd()
    # Block every signal across fork: until K has reset the launcher's handlers to SIG_DFL, a signal must
    # not run P's Python handlers (which forward signals to the container) in K.
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
    try:
        child = os.fork()
        if child == 0:                                   # K: becomes the helper
            try:
                for sig in ALL_SIGNALS:
                    try:
                        _signal.signal(sig, _signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
                os.setsid()
                from runtime import libc                 # ctypes: paid in K only, never in P
                libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step=f"{tool}: set the parent-death signal")
                if os.getppid() != parent:               # P died before the prctl took effect
                    os._exit(1)
                os.dup2(nul, 0)
                os.dup2(nul, 1)
                os.dup2(stderr, 2)
                os.set_inheritable(pass_fd, True)
                _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
                os.execv(argv[0], argv)
            except BaseException:
                pass
            os._exit(127)
        return child
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        os.close(nul)


def run_capture(argv, tool):
    """Run argv to completion with stdout+stderr captured (for --help); return the output as text."""
    r, w = os.pipe()
    try:
        pid = spawn(argv, stdout=w, stderr=w)
    finally:
        os.close(w)
    chunks = []
    try:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "replace")
