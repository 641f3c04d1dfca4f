"""--net slirp4netns (the default): user-mode networking through slirp4netns, as podman runs it.

    slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox --enable-seccomp
                --ready-fd=R --exit-fd=E [--api-socket PATH] PID tap0

* Each optional flag is used only if `slirp4netns --help` lists it; the help text is cached per user, keyed by
  the binary's path, mtime, size and inode (runtime.net.helpcache), so a start spawns slirp4netns once.
* start() returns when slirp4netns writes to the ready fd: tap0 is 10.0.2.100/24, default route via 10.0.2.2,
  MTU 65520, lo up (all done by --configure). One blocking poll(2) on the fd, no polling loop, no sleeps.
* Lifetime: P keeps the write end of the exit-fd pipe (close-on-exec, created after I was forked, so neither I
  nor the container holds a copy). When P exits or is SIGKILLed the kernel closes it, slirp4netns sees POLLHUP
  and exits. stop() closes it and SIGKILLs slirp4netns without waiting for the kernel to finish its exit
  (the tap teardown takes ~20 ms in exit_group: see runtime.net.wait.end).
* Published ports: the host side is checked in prepare() (free, local, allowed). TCP ports go through pirun's
  port forwarder (runtime.net.forward: splice(2) between a host socket and one to 10.0.2.100 inside, as
  podman's default rootlesskit port handler), several times faster than slirp4netns' own forwarding,
  which runs every byte through libslirp's TCP stack. UDP ports (and TCP with PIRUN_PORT_HANDLER=slirp4netns,
  for the benchmark) are one add_hostfwd request each on the API socket (json imported only then), which
  keeps the client's source address. The socket and its private directory are removed as soon as the ports
  are set up: nothing is left on disk even if P is SIGKILLed later.
* MTU: 65520 (8x the throughput of 1500, rootlesskit's figures). PIRUN_SLIRP4NETNS_MTU overrides it (for the
  benchmark's MTU-1500 row).
"""
import os

from runtime.errors import NetworkError
from runtime.net import host_search_domains
from runtime.net.helpcache import probe_help
from runtime.net.helper import HelperBackend, check_tun
from runtime.tools import find as find_binary      # the one lookup of host tools
from runtime.net.spawn import log_fd, spawn
from runtime.net.wait import READY_TIMEOUT, describe_status, end, exited, pidfd_of, reap, wait_for

TOOL = "slirp4netns"
MTU = 65520
GUEST_ADDR = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
IFNAME = "tap0"


def _sandbox_ok():
    """--enable-sandbox pivots into a tmpfs that keeps only /etc and /run: it fails when /etc/resolv.conf is a
    symlink to elsewhere (slirp4netns #315). Drop the flag then rather than fail the container."""
    try:
        real = os.path.realpath("/etc/resolv.conf")
    except OSError:
        return True
    return real.startswith(("/etc/", "/run/", "/var/run/"))


class Slirp4netnsBackend(HelperBackend):
    TOOL = TOOL

    def __init__(self, spec):
        super().__init__(spec)
        self._flags = ()
        self._exit_w = None
        self._dir = None
        self._fwd = None            # the port forwarder's PID, pidfd and exit-pipe write end
        self._fwd_pidfd = None
        self._fwd_exit = None

    # -- before fork -------------------------------------------------------------------------------------
    def prepare(self):
        path = find_binary(TOOL)
        if path is None:
            raise NetworkError(f"{TOOL}: not found on PATH", fix="apt-get install slirp4netns, or use --net none")
        check_tun()
        help_text = probe_help(path, TOOL)
        if "--ready-fd" not in help_text or "--exit-fd" not in help_text:
            raise NetworkError(f"{TOOL} at {path} has no --ready-fd/--exit-fd (too old)",
                               fix="install slirp4netns >= 0.4, or use --net pasta")
        mtu = os.environ.get("PIRUN_SLIRP4NETNS_MTU")
        if mtu is not None and not (mtu.isdigit() and 576 <= int(mtu) <= 65521):
            raise NetworkError(f"PIRUN_SLIRP4NETNS_MTU={mtu!r}: not an MTU", fix="use 576 to 65521, or unset it")
        self._path = path
        self._flags = tuple(f for f in ("--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                                        "--api-socket") if f in help_text)
        if self.spec.publish:
            if "--api-socket" not in self._flags:
                raise NetworkError(f"-p needs {TOOL} with --api-socket (>= 0.3)", fix="use --net pasta")
            from runtime.net import ports                   # -p only: not on the default path
            ports.check_ports(self.spec.publish, TOOL, ipv4_only=True)

    def argv(self, pid, ready_fd, exit_fd, api_socket=None):
        mtu = os.environ.get("PIRUN_SLIRP4NETNS_MTU") or str(MTU)
        args = [self._path, "--configure", f"--mtu={mtu}"]
        if not self.spec.allow_host_loopback and "--disable-host-loopback" in self._flags:
            args.append("--disable-host-loopback")
        if "--enable-sandbox" in self._flags and _sandbox_ok():
            args.append("--enable-sandbox")
        if "--enable-seccomp" in self._flags:
            args.append("--enable-seccomp")
        args += [f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}"]
        if api_socket:
            args += ["--api-socket", api_socket]
        args += [str(pid), IFNAME]
        return args

    def resolv_conf(self):
        text = f"nameserver {DNS}\n"
        domains = host_search_domains()
        if domains:
            text += "search " + " ".join(domains) + "\n"
        return text

    def hosts(self, hostname):
        text = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"{GUEST_ADDR}\t{hostname}\n")
        if self.spec.allow_host_loopback:
            text += f"{GATEWAY}\thost.containers.internal\n"
        return text

    # -- after I has its namespaces ------------------------------------------------------------------------
    def _split_ports(self):
        """(TCP specs for the forwarder, specs for slirp4netns' add_hostfwd)."""
        if os.environ.get("PIRUN_PORT_HANDLER") == "slirp4netns":
            return (), self.spec.publish
        return (tuple(p for p in self.spec.publish if p.proto == "tcp"),
                tuple(p for p in self.spec.publish if p.proto != "tcp"))

    def start(self, pid):
        if self._path is None:
            self.prepare()
        fwd, api_ports = self._split_ports()
        api = None
        if api_ports:
            from runtime.net.rundir import private_run_dir
            self._dir = private_run_dir("slirp")
            api = self._dir + "/api.sock"
        ready_r, ready_w = os.pipe()
        exit_r, self._exit_w = os.pipe()
        try:
            try:
                self._log = log_fd()
                self._started(spawn(self.argv(pid, ready_w, exit_r, api), pass_fds=(ready_w, exit_r),
                                    stderr=self._log))
            finally:
                os.close(ready_w)
                os.close(exit_r)
            self._wait_ready(ready_r, pid, expect=b"1")
        except BaseException:
            self._stop(wait=True)
            raise
        finally:
            os.close(ready_r)
        try:
            if fwd:
                self._start_forwarder(pid, fwd)
            for p in api_ports:
                self._add_hostfwd(api, p)
        except BaseException:
            self._stop(wait=True)
            raise
        if self._dir is not None:
            self._remove_dir()       # the API is not needed any more: leave nothing on disk

    def _start_forwarder(self, pid, specs):
        from runtime.net import forward
        ready_r, ready_w = os.pipe()
        exit_r, self._fwd_exit = os.pipe()
        try:
            try:
                self._fwd = forward.start(pid, specs, GUEST_ADDR, exit_r, ready_w)
            finally:
                os.close(ready_w)
                os.close(exit_r)
            self._fwd_pidfd = pidfd_of(self._fwd)
            got = wait_for(self._fwd_pidfd, ready_r, READY_TIMEOUT)
        finally:
            os.close(ready_r)
        if got == b"1":
            return
        if got is None:
            raise NetworkError(f"port forwarder: not ready after {READY_TIMEOUT:g} s",
                               fix="check the host's load; see `run.py --check`")
        raise forward.failure(got)

    def _add_hostfwd(self, api, p):
        import json
        from runtime.net import ports
        import _socket
        req = json.dumps({"execute": "add_hostfwd",
                          "arguments": {"proto": p.proto, "host_addr": p.host_ip or "0.0.0.0",
                                        "host_port": p.host_port, "guest_port": p.container_port}})
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(READY_TIMEOUT)
            s.connect(api)
            s.sendall(req.encode())      # slirp4netns reads a request with one read(2): send it whole
            s.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                b = s.recv(4096)
                if not b:
                    break
                chunks.append(b)
        except OSError as e:
            raise NetworkError(f"-p {ports.port_label(p)}: {TOOL} API {api}: {e.strerror or e}") from None
        finally:
            s.close()
        try:
            reply = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            reply = {}
        if "return" not in reply:
            desc = (reply.get("error") or {}).get("desc") or "no reply"
            desc = desc.replace("bad request: add_hostfwd: ", "")
            raise NetworkError(f"-p {ports.port_label(p)}: {TOOL} cannot listen on {p.host_ip or '0.0.0.0'}:"
                               f"{p.host_port} ({desc})",
                               fix="the host port was probably taken meanwhile; choose another one")

    # -- while running, and at the end ---------------------------------------------------------------------
    def watch_fds(self):
        fds = super().watch_fds()
        if self._fwd is not None and self._fwd_pidfd is not None:
            fds += (self._fwd_pidfd,)
        return fds

    def poll(self):
        notice = super().poll()
        if notice or self._fwd is None:
            return notice
        status = exited(self._fwd)
        if status is None:
            return None
        self._fwd = None
        return (f"port forwarder {describe_status(status if status != -1 else None)}: published TCP ports "
                "do not answer any more")

    def _stop(self, wait):
        if self._fwd_exit is not None:
            os.close(self._fwd_exit)        # F exits on POLLHUP, as it does when P dies
            self._fwd_exit = None
        if self._fwd is not None:
            if wait:
                reap(self._fwd, 0, self._fwd_pidfd)
            else:
                end(self._fwd)
            self._fwd = None
        if self._fwd_pidfd is not None:
            os.close(self._fwd_pidfd)
            self._fwd_pidfd = None
        if self._exit_w is not None:
            os.close(self._exit_w)          # what P's death does too: slirp4netns sees POLLHUP and exits
            self._exit_w = None
        super()._stop(wait)
        if self._dir is not None:
            self._remove_dir()

    def _remove_dir(self):
        from runtime.net.rundir import remove_tree
        remove_tree(self._dir)
        self._dir = None
