"""Plumbing shared by the backends that run a helper process (slirp4netns, pasta).

Hot path: only `os`, `posix` and the built-in `select`/`_signal` modules; no subprocess, socket, json or ctypes.
Everything here runs in process P (the launcher, the user's own credentials).
"""
import os
import select
import _signal

from runtime.errors import NetworkError
from runtime.tools import find as find_binary     # noqa: F401 - the one lookup of host tools (runtime/tools.py)

READY_TIMEOUT = 10.0        # seconds a helper may take to say "ready" (a loaded Pi 3 needs < 0.5 s)
STOP_TIMEOUT = 2.0          # reap(): seconds a failed helper gets to exit before SIGKILL

# Dispositions the helper must not inherit from P: Python ignores SIGPIPE and SIGXFSZ; the launcher may ignore
# or block terminal signals while it relays them.
_SIGDEF = tuple(getattr(_signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT",
                                                 "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCHLD", "SIGUSR1",
                                                 "SIGUSR2", "SIGALRM", "SIGWINCH"))


def state_dir(kind="cache"):
    """A private per-user directory: $XDG_RUNTIME_DIR/pirun if usable, else ~/.cache/pirun for kind="cache";
    None when nothing fits (kind="run" without XDG_RUNTIME_DIR: the caller falls back to /tmp)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        d = xdg + "/pirun"
    elif kind == "cache":
        home = os.environ.get("XDG_CACHE_HOME") or (os.path.expanduser("~") + "/.cache")
        d = home + "/pirun"
    else:
        return None
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return d


def private_run_dir(prefix):
    """A fresh 0700 directory for one container's sockets; the caller removes it in stop()."""
    base = state_dir("run")
    if base is None:
        base = "/tmp"
    _sweep(base, prefix)
    for _ in range(100):
        d = f"{base}/{prefix}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            continue
    raise NetworkError(f"create a private directory under {base}: File exists")


def _sweep(base, prefix):
    """Remove directories left by a P that was SIGKILLed in the few ms they exist (named PREFIX-PID-RANDOM)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == prefix and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            remove_tree(f"{base}/{name}")


def remove_tree(d):
    """Remove a directory made by private_run_dir (flat: sockets and small files only)."""
    if not d:
        return
    try:
        for name in os.listdir(d):
            try:
                os.unlink(d + "/" + name)
            except OSError:
                pass
        os.rmdir(d)
    except OSError:
        pass


def probe_help(path, tool):
    """`<path> --help` output, cached per user in a file keyed by the binary's path, mtime, size and inode, so
    that a start does not spawn the tool twice. The cache is written atomically (temp file + rename)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NetworkError(f"{tool}: stat {path}: {e.strerror}", fix=f"install {tool}") from None
    key = f"{path}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_ino}\n"
    d = state_dir("cache")
    cache = f"{d}/{tool}-help" if d else None
    if cache:
        try:
            with open(cache, encoding="utf-8", errors="replace") as f:
                data = f.read()
            if data.startswith(key):
                return data[len(key):]
        except OSError:
            pass
    text = run_capture([path, "--help"], tool)
    if cache:
        tmp = f"{cache}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(key + text)
            os.replace(tmp, cache)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return text


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


def wait_ready(fd, timeout=READY_TIMEOUT):
    """Block until fd is readable (data or EOF) or timeout; return the bytes read, None on timeout.
    One blocking poll(2), not a polling loop."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not p.poll(int(timeout * 1000)):     # PEP 475: EINTR is retried with the remaining timeout
        return None
    return os.read(fd, 512)


def reap(pid, timeout=STOP_TIMEOUT):
    """Wait up to `timeout` s for child `pid` to exit (pidfd + poll, no sleeps), then SIGKILL and wait.
    Returns the wait status, or None if pid was not our child any more."""
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            return status
    except ChildProcessError:
        return None
    try:
        pfd = os.pidfd_open(pid)
    except OSError:
        pfd = None
    if pfd is not None:
        try:
            p = select.poll()
            p.register(pfd, select.POLLIN)
            if not p.poll(int(timeout * 1000)):
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            os.close(pfd)
    else:
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def end(pid):
    """Stop a helper without waiting for the kernel to finish its exit: SIGKILL (it cannot be caught, blocked
    or ignored, so the helper is certain to die), then reap it if it is already gone. Waiting would cost P
    about 20 ms on every container: closing the tap fd unregisters the device (RCU grace periods) inside the
    helper's exit_group, measured 17-38 ms here. An unreaped zombie goes to init or the nearest subreaper when
    P exits. Returns the wait status if reaped, else None."""
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if wpid == pid else None


def describe_status(status):
    if status is None:
        return "exited"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def exited(pid):
    """Non-blocking: the wait status if child `pid` has exited (reaping it), else None."""
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return status if wpid == pid else None


def check_tun():
    """slirp4netns and pasta open /dev/net/tun inside the container's namespaces, but the permission check is
    on the host's device node: mode 0600 root (no udev rule) makes both fail with EACCES for a user."""
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        try:
            mode = oct(os.stat("/dev/net/tun").st_mode & 0o7777)[2:]
            why = f"Permission denied (mode {mode})"
            fix = "chmod 0666 /dev/net/tun (Debian's udev default, 50-udev-default.rules) or use --net none"
        except OSError as e:
            why = e.strerror
            fix = "load the tun module (modprobe tun) or use --net none"
        raise NetworkError(f"open /dev/net/tun: {why}", fix=fix)


def unprivileged_port_start():
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def port_label(p):
    ip = p.host_ip or "0.0.0.0"
    if ":" in ip:
        ip = f"[{ip}]"
    return f"{ip}:{p.host_port}:{p.container_port}/{p.proto}"


def check_ports(publish, tool, ipv4_only=False):
    """Validate what only the host can tell about -p specs, before anything starts: the host address is one
    of this host's, the host port is free (bind it, as the helper will) and allowed for this user. All specs
    are bound at once, so two specs claiming the same host port collide here too. Imports _socket (cheap)
    only when -p is used."""
    import _socket
    held = []
    try:
        for p in publish:
            ip = p.host_ip or "0.0.0.0"
            fam = _socket.AF_INET6 if ":" in ip else _socket.AF_INET
            label = f"-p {port_label(p)}"
            if p.proto not in ("tcp", "udp"):
                raise NetworkError(f"{label}: protocol {p.proto!r} not supported by {tool}",
                                   fix="use /tcp or /udp")
            if ipv4_only and fam != _socket.AF_INET:
                raise NetworkError(f"{label}: {tool} publishes on IPv4 host addresses only",
                                   fix="use an IPv4 host address (e.g. 127.0.0.1) or --net pasta")
            try:
                _socket.inet_pton(fam, ip)
            except OSError:
                raise NetworkError(f"{label}: {ip!r} is not an IP address", fix="give a numeric host IP") from None
            s = _socket.socket(fam, _socket.SOCK_STREAM if p.proto == "tcp" else _socket.SOCK_DGRAM)
            held.append(s)
            if p.proto == "tcp":   # as the helpers do: a port in TIME_WAIT is free, a listening one is not
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, p.host_port))
                if p.proto == "tcp":
                    s.listen(1)     # so that a second spec for the same port collides (SO_REUSEADDR)
            except OSError as e:
                import errno
                if e.errno == errno.EADDRINUSE:
                    raise NetworkError(f"{label}: host port {p.host_port}/{p.proto} on {ip} is already in use",
                                       fix="choose another host port (ss -lntup shows who holds it)") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise NetworkError(f"{label}: {ip} is not an address of this host",
                                       fix="use 127.0.0.1, 0.0.0.0 or one of this host's addresses") from None
                if e.errno == errno.EACCES:
                    start = unprivileged_port_start()
                    raise NetworkError(f"{label}: host port {p.host_port} needs privileges (ports below {start})",
                                       fix=f"use a host port >= {start}, or sysctl -w "
                                           f"net.ipv4.ip_unprivileged_port_start={p.host_port}") from None
                raise NetworkError(f"{label}: bind {ip}:{p.host_port}: {e.strerror}") from None
    finally:
        for s in held:
            s.close()


from runtime.net import NetBackend  # noqa: E402  (runtime.net does not import this module)


class HelperBackend(NetBackend):
    """A backend served by a helper process that the launcher started (slirp4netns, pasta): watching it,
    reporting its death once, and ending it."""
    TOOL = None

    def __init__(self, spec):
        super().__init__(spec)
        self._path = None
        self._pid = None
        self._log = None
        self._reported = False
        self._pidfd = None

    def watch_fds(self):
        """A pidfd of the helper: readable when it exits, so the launcher can call poll() at once."""
        if self._pidfd is None and self._pid is not None:
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except OSError:
                return ()
        return (self._pidfd,) if self._pidfd is not None else ()

    def poll(self):
        if self._pid is None or self._reported:
            return None
        status = exited(self._pid)
        if status is None:
            return None
        self._reported = True
        self._pid = None
        log = read_log(self._log) if self._log is not None else ""
        return (f"{self.TOOL} {describe_status(status if status != -1 else None)}: the container has no "
                f"network any more" + (f" ({log})" if log else ""))

    def stop(self):
        self._stop(wait=False)

    def _stop(self, wait):
        if self._pid is not None:
            if wait:                        # failure paths: leave not even a zombie
                reap(self._pid, 0)
            else:                           # certain death, without waiting for the tap teardown
                end(self._pid)
            self._pid = None
        if self._log is not None:
            os.close(self._log)
            self._log = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
