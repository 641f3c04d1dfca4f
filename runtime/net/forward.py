"""TCP port forwarding for -p at socket level (what rootlesskit's builtin port driver does for podman's
default slirp4netns setup), instead of through slirp4netns' user-mode TCP stack.

A forwarder process F, forked from P after I has its namespaces:
  * binds and listens on each published host address and port, in the host's network namespace;
  * joins the container's user and network namespaces (setns, as the user who owns them);
  * per accepted connection, connects to the container port on the container's own address (10.0.2.100 with
    slirp4netns, as podman's rootlesskit handler does: the kernel routes it over the container's loopback; a
    service bound to 127.0.0.1 inside stays unreachable from the host, as with slirp4netns' own forwarding,
    and sees connections coming from 10.0.2.100), then moves the bytes with splice(2) through a pipe, in the
    kernel, one thread per direction, half-close passed on with shutdown(SHUT_WR).
F says "ready" (b"1") or one error line on a pipe, and ends when P does: it holds the read end of a pipe whose
only write end P keeps, and exits on POLLHUP (also after kill -9 of P). F never writes to the user's terminal:
0, 1 and 2 are /dev/null, and every fd of P but its own two pipes is closed.

libslirp computes every segment's checksum in software, 16 bits at a time, and copies each segment between its
buffers (a perf profile of slirp4netns under iperf3: ~60 % of its one thread in `cksum`, ~10-30 % in memmove),
so its TCP forwarding stays near a quarter of loopback; splice between two loopback sockets does not touch the
bytes in user space.
"""
import os
import _signal

from runtime.errors import NetworkError
from runtime.net.spawn import ALL_SIGNALS

_PR_SET_DUMPABLE = 4                 # <linux/prctl.h>
CHUNK = 1 << 20                      # bytes per splice(2): the unprivileged pipe-max-size default
_FLAGS = os.SPLICE_F_MOVE              # not SPLICE_F_MORE: corking the send side measured slower here


def start(ns_pid, specs, target, exit_r, ready_w):
    """Fork F for the TCP PortSpecs `specs` into the namespaces of process `ns_pid`, forwarding to IPv4
    address `target` inside. Returns F's PID; F writes b"1" or an error line to `ready_w` and ends on POLLHUP
    of `exit_r`."""
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _forwarder(ns_pid, specs, target, exit_r, ready_w)
                code = 0
            except BaseException as e:    # never a traceback on the user's terminal
                try:
                    os.write(ready_w, _report(e).encode()[:500])
                except OSError:
                    pass
            os._exit(code)
        return pid
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


def _report(e):
    """What F writes on its ready pipe when it fails: MESSAGE, a NUL and the FIX (read back by failure())."""
    if hasattr(e, "message"):
        return f"{e.message}\0{e.fix or ''}"
    return f"port forwarder: {type(e).__name__}: {e}\0"


def failure(data):
    """The NetworkError for what F wrote instead of b"1"."""
    message, _, fix = data.decode("utf-8", "replace").partition("\0")
    return NetworkError(message or "port forwarder: exited", fix=fix or None)


def _forwarder(ns_pid, specs, target, exit_r, ready_w):
    for sig in ALL_SIGNALS:
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)   # a peer gone mid-splice is EPIPE, not death
    os.setsid()                                         # terminal signals meant for the container: not for F
    keep = {exit_r, ready_w}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    nul = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(nul, fd)
    os.close(nul)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())

    import _socket
    import fcntl  # noqa: F401                          # for _pump, imported before any thread runs
    listeners = {}
    for p in specs:
        ip = p.host_ip or "0.0.0.0"
        fam = _socket.AF_INET6 if ":" in ip else _socket.AF_INET
        s = _socket.socket(fam, _socket.SOCK_STREAM)
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, p.host_port))
            s.listen(128)
        except OSError as e:
            raise NetworkError(f"-p {ip}:{p.host_port}:{p.container_port}/tcp: cannot listen on {ip}:"
                               f"{p.host_port} ({e.strerror})",
                               fix="the host port was probably taken meanwhile; choose another one") from None
        listeners[s.fileno()] = (s, p.container_port)

    from runtime import libc
    for ns, flag in (("user", libc.CLONE_NEWUSER), ("net", libc.CLONE_NEWNET)):
        fd = os.open(f"/proc/{ns_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, flag, f"the container's {ns} namespace")
        finally:
            os.close(fd)
    libc.set_name("pirun-portfwd")
    libc.prctl(_PR_SET_DUMPABLE, 0, step="port forwarder: set non-dumpable")   # no ptrace, no /proc peeking

    os.write(ready_w, b"1")
    os.close(ready_w)

    import _thread
    import select
    p = select.poll()
    p.register(exit_r, select.POLLIN | select.POLLHUP)
    for fd in listeners:
        p.register(fd, select.POLLIN)
    while True:
        for fd, _ in p.poll():
            if fd == exit_r:
                os._exit(0)
            s, port = listeners[fd]
            try:
                fd, _ = s._accept()        # _socket's accept: the socket module costs 8 ms to import
            except OSError:
                continue
            conn = _socket.socket(s.family, _socket.SOCK_STREAM, 0, fd)
            try:
                out = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
                out.connect((target, port))
            except OSError:
                out.close()
                conn.close()              # nothing listens inside: the client sees the connection end
                continue
            for sock in (conn, out):
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            pair = [conn, out, 2, _thread.allocate_lock()]
            _thread.start_new_thread(_pump, (conn, out, pair))
            _thread.start_new_thread(_pump, (out, conn, pair))


def _pump(src, dst, pair):
    """src -> dst through a pipe with splice(2) until EOF or error; then pass the half-close on. The second
    pump of a pair to finish closes both sockets."""
    import _socket
    r, w = os.pipe()
    try:
        try:
            import fcntl
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)   # 1 MiB instead of 64 KiB: fewer splice calls
        except OSError:
            pass
        s_fd, d_fd = src.fileno(), dst.fileno()
        while True:
            n = os.splice(s_fd, w, CHUNK, flags=_FLAGS)
            if n == 0:
                break
            while n:
                n -= os.splice(r, d_fd, n, flags=_FLAGS)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        with pair[3]:
            pair[2] -= 1
            last = pair[2] == 0
        if last:
            pair[0].close()
            pair[1].close()
