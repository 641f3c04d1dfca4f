"""--net pasta: passt's pasta (podman's default since 5.0), several times faster than slirp4netns.

    pasta --config-net -f -q -P /proc/self/fd/W [-t SPEC]... [-u SPEC]... (or -t none -u none)
          -T none -U none [--no-map-gw] PID

Lifetime (pasta never exits by itself when attached to a PID, and daemonizes unless -f): pasta runs in the
  foreground (-f) as a direct child of P started by spawn.spawn_tied, killed by the kernel the moment P dies
  (PR_SET_PDEATHSIG(SIGKILL), SIGKILL of P included), and by stop() otherwise (SIGKILL: pasta keeps no state
  worth a clean exit, and P does not wait for the kernel's tap teardown). The process shows as `passt.avx2` or
  `passt` in ps (pasta re-execs its AVX2 build), not `pasta`.
Readiness (no polling): pasta writes its PID file (-P) only after it has configured the namespace (address,
  routes, MTU 65520, link up). The "file" is /proc/self/fd/W, W being the write end of a pipe P holds the read
  end of: one poll(2) on that pipe plus a pidfd of pasta (to notice an early exit) tells ready or failed.
Network inside: pasta copies the host's address, prefix and default gateway onto an interface named like the
  host's (e.g. eth0), MTU 65520; lo is up.
Host loopback: --no-map-gw unless --allow-host-loopback (then the gateway address reaches the host's 127.0.0.1).
  -T none -U none always: no automatic forwarding of the host's bound ports into the container's loopback.
IPv6: -4 when the host has no IPv6 default route (and no -p names an IPv6 address): pasta zero-fills its
  static IPv4 and IPv6 frame buffers at start whether or not it will use them; -4 skips the IPv6 ones
  (PSS 29 -> 20 MB, start CPU 23 -> 17 ms, measured here).
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

from runtime.errors import NetworkError
from runtime.net import host_search_domains
from runtime.net.helper import HelperBackend, check_tun
from runtime.tools import find as find_binary      # the one lookup of host tools
from runtime.net.spawn import log_fd, spawn_tied

TOOL = "pasta"


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


def host_has_ipv6_route(path="/proc/net/ipv6_route"):
    """Whether the host has an IPv6 default route (up, not the kernel's unreachable one on lo)."""
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if (len(fields) == 10 and fields[1] == "00" and int(fields[0], 16) == 0 and fields[9] != "lo"
                        and int(fields[8], 16) & 1):
                    return True
    except (OSError, ValueError):
        return True                                     # unknown: leave IPv6 to pasta
    return False


class PastaBackend(HelperBackend):
    TOOL = TOOL

    def prepare(self):
        path = find_binary(TOOL)
        if path is None:
            raise NetworkError(f"{TOOL}: not found on PATH", fix="apt-get install passt, or use --net slirp4netns")
        check_tun()
        if self.spec.publish:
            from runtime.net import ports                   # -p only: not on the default path
            ports.check_ports(self.spec.publish, TOOL)
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
        if not host_has_ipv6_route() and not any(":" in (p.host_ip or "") for p in self.spec.publish):
            args.append("-4")       # no IPv6 to give: pasta then skips its IPv6 buffers (~10 MB, ~6 ms)
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
        try:
            try:
                self._log = log_fd()
                self._started(spawn_tied(self.argv(pid, f"/proc/self/fd/{ready_w}"), ready_w, self._log, TOOL))
            finally:
                os.close(ready_w)
            self._wait_ready(ready_r, pid)        # b"PID\n" once pasta has configured the namespace
        except BaseException:
            self._stop(wait=True)
            raise
        finally:
            os.close(ready_r)
