"""--net pasta: passt's pasta (podman's default since 5.0), several times faster than slirp4netns.

    pasta --config-net -f -q -P /proc/self/fd/W [-t SPEC]... [-u SPEC]... (or -t none -u none)
          -T none -U none [--no-map-gw] PID

Lifetime (pasta never exits by itself when attached to a PID, and daemonizes unless -f):
  P blocks all signals and forks a tiny child K, which resets every handler to SIG_DFL, starts its own
  session, sets PR_SET_PDEATHSIG(SIGKILL), checks that P is still its parent (closing the race with P dying
  before the prctl), and execs pasta in the foreground (-f). So pasta IS K: a direct child of P, killed by the
  kernel the moment P dies (SIGKILL included), and by stop() otherwise (SIGKILL: pasta keeps no state worth a
  clean exit, and P does not wait for the kernel's tap teardown). PDEATHSIG fires when the *thread* that
  forked K exits: the launcher must call start() from its main thread (it does). The process shows as
  `passt.avx2` or `passt` in ps (pasta re-execs its AVX2 build), not `pasta`.
Readiness (no polling): pasta writes its PID file (-P) only after it has configured the namespace (address,
  routes, MTU 65520, link up). The "file" is /proc/self/fd/W, W being the write end of a pipe P holds the read
  end of: one poll(2) on that pipe plus a pidfd of pasta (to notice an early exit) tells ready or failed.
Network inside: pasta copies the host's address, prefix and default gateway onto an interface named like the
  host's (e.g. eth0), MTU 65520; lo is up.
Host loopback: --no-map-gw unless --allow-host-loopback (then the gateway address reaches the host's 127.0.0.1).
  -T none -U none always: no automatic forwarding of the host's bound ports into the container's loopback.
Ports: -t/-u [HOST_IP/]HOST_PORT:CONTAINER_PORT per spec; -t none/-u none otherwise (pasta's default `auto`
  would publish every port the container listens on).
DNS: resolv.conf lists the host's own nameservers (from /etc/resolv.conf) and search domains. pasta's namespace
  has the host's addresses and routes, so the container reaches those servers directly through pasta's NAT,
  with the libc failover of several servers (pasta's --dns-forward would use only the first). Loopback
  servers (127.0.0.53 systemd-resolved, a local Pi-hole on 127.0.0.1) are not reachable from the container's
  own loopback: they are replaced by the gateway address when --allow-host-loopback maps it to the host's
  127.0.0.1 (works for a server on 127.0.0.1 or 0.0.0.0:53), and otherwise left out with a comment.
"""
import os
import _signal

from runtime.errors import NetworkError
from runtime.net import NetBackend, host_search_domains
from runtime.net import _helper

TOOL = "pasta"
_ALL_SIGNALS = tuple(s for s in _signal.valid_signals() if s not in (_signal.SIGKILL, _signal.SIGSTOP))


def host_nameservers(path="/etc/resolv.conf"):
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1].split("%")[0])
    except OSError:
        pass
    return servers


def _is_loopback(addr):
    return addr.startswith("127.") or addr == "::1"


def host_gateway4(path="/proc/net/route"):
    """The host's IPv4 default gateway (what pasta copies into the namespace), or None."""
    try:
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000" and int(fields[3], 16) & 2:
                    g = int(fields[2], 16)
                    return ".".join(str((g >> s) & 255) for s in (0, 8, 16, 24))
    except (OSError, ValueError, StopIteration):
        pass
    return None


class PastaBackend(_helper.HelperBackend):
    TOOL = TOOL

    def prepare(self):
        path = _helper.find_binary(TOOL)
        if path is None:
            raise NetworkError(f"{TOOL}: not found on PATH", fix="apt-get install passt, or use --net slirp4netns")
        _helper.check_tun()
        if self.spec.publish:
            _helper.check_ports(self.spec.publish, TOOL)
        self._path = path

    def argv(self, pid, pidfile):
        args = [self._path, "--config-net", "-f", "-q", "-P", pidfile]
        tcp = [p for p in self.spec.publish if p.proto == "tcp"]
        udp = [p for p in self.spec.publish if p.proto == "udp"]
        for opt, specs in (("-t", tcp), ("-u", udp)):
            if not specs:
                args += [opt, "none"]
            for p in specs:
                addr = f"{p.host_ip}/" if p.host_ip and p.host_ip not in ("0.0.0.0", "::") else ""
                args += [opt, f"{addr}{p.host_port}:{p.container_port}"]
        args += ["-T", "none", "-U", "none"]
        if not self.spec.allow_host_loopback:
            args.append("--no-map-gw")
        args.append(str(pid))
        return args

    def resolv_conf(self):
        lines = []
        gw = None
        for ns in host_nameservers():
            if not _is_loopback(ns):
                lines.append(f"nameserver {ns}")
            elif self.spec.allow_host_loopback and ns.startswith("127."):
                gw = gw or host_gateway4()
                if gw and f"nameserver {gw}" not in lines:
                    lines.append(f"nameserver {gw}")
            else:
                lines.append(f"# nameserver {ns}: on the host's loopback, unreachable from the container "
                             "(--allow-host-loopback reaches 127.0.0.1 through the gateway)")
        domains = host_search_domains()
        if domains:
            lines.append("search " + " ".join(domains))
        return "\n".join(lines) + "\n" if lines else ""

    def start(self, pid):
        if self._path is None:
            self.prepare()
        ready_r, ready_w = os.pipe()
        self._log = _helper.log_fd()
        argv = self.argv(pid, f"/proc/self/fd/{ready_w}")
        parent = os.getpid()
        nul = _helper.null_fd()
        # Block every signal across fork: until K has reset the launcher's handlers to SIG_DFL, a signal must
        # not run P's Python handlers (which forward signals to the container) in K.
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            child = os.fork()
            if child == 0:                                   # K: becomes pasta
                try:
                    for sig in _ALL_SIGNALS:
                        try:
                            _signal.signal(sig, _signal.SIG_DFL)
                        except (OSError, ValueError):
                            pass
                    os.setsid()
                    from runtime import libc                 # ctypes: paid in K only, never in P
                    libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="pasta: set the parent-death signal")
                    if os.getppid() != parent:               # P died before the prctl took effect
                        os._exit(1)
                    os.dup2(nul, 0)
                    os.dup2(nul, 1)
                    os.dup2(self._log, 2)
                    os.set_inheritable(ready_w, True)
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
                    os.execv(argv[0], argv)
                except BaseException:
                    pass
                os._exit(127)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
            os.close(nul)
            os.close(ready_w)
        self._pid = child
        try:
            got = self._wait_ready(ready_r)
        except BaseException:
            self._stop(wait=True)
            raise
        finally:
            os.close(ready_r)
        if not got:
            status = _helper.reap(self._pid, 0.5)
            self._pid = None
            log = _helper.read_log(self._log)
            self._stop(wait=True)
            if got is None:
                raise NetworkError(f"{TOOL}: network not ready after {_helper.READY_TIMEOUT:g} s",
                                   fix="check the host's load; see `run.py --check`")
            raise NetworkError(f"{TOOL} for PID {pid}: {_helper.describe_status(status)}"
                               + (f": {log}" if log else ""))

    def _wait_ready(self, ready_r):
        """b"PID\\n" once pasta has configured the namespace; b"" if it exited first; None on timeout."""
        import select
        pfd = os.pidfd_open(self._pid)
        try:
            p = select.poll()
            p.register(ready_r, select.POLLIN | select.POLLHUP)
            p.register(pfd, select.POLLIN)
            events = p.poll(int(_helper.READY_TIMEOUT * 1000))
            if not events:
                return None
            if any(fd == ready_r for fd, _ in events):
                return os.read(ready_r, 64)
            return b""
        finally:
            os.close(pfd)
