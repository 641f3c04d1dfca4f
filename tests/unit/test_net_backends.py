"""Network backends without privileges or containers: argv, DNS files, the --help cache, the spawn plumbing,
host-side port checks, and the hot-path import rule."""
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from runtime.errors import NetworkError                      # noqa: E402
from runtime.net import backend_for, helpcache, helper, ports, rundir, spawn, wait  # noqa: E402
from runtime.net import pasta as pasta_mod                    # noqa: E402
from runtime.net import slirp4netns as slirp_mod              # noqa: E402
from runtime.spec import NetSpec, PortSpec                    # noqa: E402

ALL_FLAGS = ("--disable-host-loopback", "--enable-sandbox", "--enable-seccomp", "--api-socket")


def slirp(**kw):
    b = backend_for(NetSpec(mode="slirp4netns", **kw))
    b._path, b._flags = "/usr/bin/slirp4netns", ALL_FLAGS
    return b


def pasta(**kw):
    b = backend_for(NetSpec(mode="pasta", **kw))
    b._path = "/usr/bin/pasta"
    return b


# --- slirp4netns argv ---------------------------------------------------------------------------------------------
def test_slirp_argv_default_is_podmans(monkeypatch):
    monkeypatch.delenv("PIRUN_SLIRP4NETNS_MTU", raising=False)
    monkeypatch.setattr(slirp_mod, "_sandbox_ok", lambda: True)
    assert slirp().argv(1234, 5, 6) == [
        "/usr/bin/slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
        "--enable-seccomp", "--ready-fd=5", "--exit-fd=6", "1234", "tap0"]


def test_slirp_argv_allow_host_loopback_and_api_socket(monkeypatch):
    monkeypatch.setattr(slirp_mod, "_sandbox_ok", lambda: True)
    args = slirp(allow_host_loopback=True).argv(1, 5, 6, "/run/x/api.sock")
    assert "--disable-host-loopback" not in args
    assert args[-4:] == ["--api-socket", "/run/x/api.sock", "1", "tap0"]


def test_slirp_argv_uses_only_supported_flags(monkeypatch):
    monkeypatch.setattr(slirp_mod, "_sandbox_ok", lambda: True)
    b = slirp()
    b._flags = ()
    args = b.argv(1, 5, 6)
    assert not any(a in args for a in ALL_FLAGS)
    assert "--ready-fd=5" in args and "--exit-fd=6" in args


def test_slirp_sandbox_dropped_when_resolv_conf_points_outside_etc_run(monkeypatch):
    monkeypatch.setattr(os.path, "realpath", lambda p: "/usr/lib/systemd/resolv.conf")
    assert "--enable-sandbox" not in slirp().argv(1, 5, 6)


def test_slirp_mtu_override_for_benchmarks(monkeypatch):
    monkeypatch.setenv("PIRUN_SLIRP4NETNS_MTU", "1500")
    assert "--mtu=1500" in slirp().argv(1, 5, 6)


def test_slirp_resolv_conf_keeps_host_search_domains(monkeypatch):
    monkeypatch.setattr(slirp_mod, "host_search_domains", lambda: ["lan", "example.org"])
    assert slirp().resolv_conf() == "nameserver 10.0.2.3\nsearch lan example.org\n"
    monkeypatch.setattr(slirp_mod, "host_search_domains", lambda: [])
    assert slirp().resolv_conf() == "nameserver 10.0.2.3\n"


def test_slirp_hosts_names_the_container():
    h = slirp().hosts("box")
    assert "127.0.0.1\tlocalhost\n" in h and "10.0.2.100\tbox\n" in h
    assert "host.containers.internal" not in h
    assert "10.0.2.2\thost.containers.internal" in slirp(allow_host_loopback=True).hosts("box")


# --- pasta argv and DNS -------------------------------------------------------------------------------------------
def test_pasta_argv_default_forwards_nothing_and_blocks_host_loopback(monkeypatch):
    monkeypatch.setattr(pasta_mod, "host_has_ipv6_route", lambda: True)
    assert pasta().argv(77, "/proc/self/fd/9") == [
        "/usr/bin/pasta", "--config-net", "-f", "-q", "-P", "/proc/self/fd/9", "-t", "none", "-u", "none",
        "-T", "none", "-U", "none", "--no-map-gw", "77"]


def test_pasta_argv_ports_and_host_loopback():
    b = pasta(allow_host_loopback=True, publish=(
        PortSpec(host_ip="127.0.0.1", host_port=8080, container_port=80),
        PortSpec(host_ip="0.0.0.0", host_port=5353, container_port=53, proto="udp"),
        PortSpec(host_ip="::1", host_port=8443, container_port=443)))
    args = b.argv(5, "/p")
    assert "--no-map-gw" not in args
    joined = " ".join(args)
    assert "-t 127.0.0.1/8080:80" in joined and "-t ::1/8443:443" in joined and "-u 5353:53" in joined
    assert "-t none" not in joined and "-u none" not in joined
    assert "-T none -U none" in joined


def test_pasta_resolv_conf_host_servers(monkeypatch):
    monkeypatch.setattr(pasta_mod, "host_nameservers", lambda: ["192.168.1.1", "127.0.0.53", "fd00::1"])
    monkeypatch.setattr(pasta_mod, "host_search_domains", lambda: ["lan"])
    text = pasta().resolv_conf()
    assert "nameserver 192.168.1.1\n" in text and "nameserver fd00::1\n" in text
    assert "nameserver 127.0.0.53\n" not in text and "# nameserver 127.0.0.53" in text
    assert text.endswith("search lan\n")


def test_pasta_resolv_conf_loopback_server_through_mapped_gateway(monkeypatch):
    monkeypatch.setattr(pasta_mod, "host_nameservers", lambda: ["127.0.0.1"])
    monkeypatch.setattr(pasta_mod, "host_search_domains", lambda: [])
    monkeypatch.setattr(pasta_mod, "host_gateway4", lambda: "192.0.2.1")
    assert pasta(allow_host_loopback=True).resolv_conf() == "nameserver 192.0.2.1\n"


def test_host_gateway4_parses_proc_net_route(tmp_path):
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n")
    assert pasta_mod.host_gateway4(str(route)) == "10.0.2.1"


# --- --help probe cache -----------------------------------------------------------------------------------------
def test_probe_help_is_cached_by_path_mtime_size(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    calls = tmp_path / "calls"
    tool = tmp_path / "fake-slirp"
    tool.write_text(f"#!/bin/sh\necho x >> {calls}\necho '--ready-fd --exit-fd --enable-sandbox'\n")
    tool.chmod(0o755)
    t1 = helpcache.probe_help(str(tool), "fake")
    t2 = helpcache.probe_help(str(tool), "fake")
    assert t1 == t2 and "--enable-sandbox" in t1
    assert calls.read_text().count("x") == 1
    assert not [p for p in (tmp_path / "pirun").iterdir() if p.name.endswith(".tmp")]
    st = tool.stat()
    os.utime(tool, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # upgraded binary: probe again
    helpcache.probe_help(str(tool), "fake")
    assert calls.read_text().count("x") == 2


def test_probe_help_without_writable_cache_still_works(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/nonexistent")
    monkeypatch.setenv("HOME", "/proc/nonexistent")
    tool = tmp_path / "t"
    tool.write_text("#!/bin/sh\necho --ready-fd\n")
    tool.chmod(0o755)
    assert "--ready-fd" in helpcache.probe_help(str(tool), "t")


# --- spawn plumbing ---------------------------------------------------------------------------------------------
def test_spawn_passes_only_the_given_fds():
    r_out, w_out = os.pipe()
    keep_r, keep_w = os.pipe()
    other_r, other_w = os.pipe()
    try:
        pid = spawn.spawn(["/bin/sh", "-c", "cd /proc/self/fd && echo *"], pass_fds=(keep_w,), stdout=w_out)
        os.close(w_out)
        out = os.read(r_out, 4096).decode().split()
        os.waitpid(pid, 0)
    finally:
        for fd in (r_out, keep_r, keep_w, other_r, other_w):
            os.close(fd)
    assert str(keep_w) in out
    assert str(other_w) not in out and str(other_r) not in out and str(keep_r) not in out


def test_spawn_gives_helper_its_own_session_and_default_sigpipe():
    r, w = os.pipe()
    pid = spawn.spawn(["/bin/sh", "-c", "cat /proc/self/stat; grep SigIgn /proc/self/status"], stdout=w)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    stat, sigign = out.decode().splitlines()[:2]
    fields = stat.rsplit(")", 1)[1].split()
    assert int(fields[3]) == int(fields[1])            # cat's session is led by the shell helper: setsid
    ignored = int(sigign.split()[1], 16)
    assert not ignored & (1 << (13 - 1)), "SIGPIPE ignored in the helper"


def test_wait_for_data_eof_and_timeout():
    r, w = os.pipe()
    os.write(w, b"1")
    assert wait.wait_for(None, r, 1) == b"1"
    os.close(w)
    assert wait.wait_for(None, r, 1) == b""
    os.close(r)
    r, w = os.pipe()
    t0 = time.monotonic()
    assert wait.wait_for(None, r, 0.1) is None
    assert time.monotonic() - t0 < 1
    os.close(r)
    os.close(w)


def test_wait_for_returns_when_the_helper_exits_without_a_word():
    r, w = os.pipe()
    pid = spawn.spawn(["/bin/sh", "-c", "exit 3"])     # does not hold w: only its pidfd can tell
    pfd = wait.pidfd_of(pid)
    t0 = time.monotonic()
    try:
        assert wait.wait_for(pfd, r, 5) == b""
        assert time.monotonic() - t0 < 2
        assert os.WEXITSTATUS(wait.reap(pid, 0, pfd)) == 3
    finally:
        for fd in (r, w, pfd):
            os.close(fd)


def test_reap_kills_a_helper_that_does_not_exit():
    pid = spawn.spawn(["/bin/sleep", "30"])
    t0 = time.monotonic()
    status = wait.reap(pid, 0.1)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    assert time.monotonic() - t0 < 2


def test_read_log_keeps_the_meaningful_lines():
    fd = spawn.log_fd()
    os.write(fd, b"WARNING: Support for seccomp is experimental\nsent tapfd=5 for tap0\n"
                 b"open(\"/dev/net/tun\"): Permission denied\nchild failed(1)\n")
    assert spawn.read_log(fd) == 'open("/dev/net/tun"): Permission denied; child failed(1)'
    os.close(fd)


# --- host-side port checks ----------------------------------------------------------------------------------------
def test_check_ports_port_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        with pytest.raises(NetworkError) as e:
            ports.check_ports((PortSpec(host_ip="127.0.0.1", host_port=port, container_port=80),), "x")
    finally:
        s.close()
    assert "already in use" in e.value.line() and "\n" not in e.value.line()


def test_check_ports_same_port_twice():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = PortSpec(host_ip="127.0.0.1", host_port=port, container_port=80)
    with pytest.raises(NetworkError, match="already in use"):
        ports.check_ports((p, p.replace(container_port=81)), "x")
    ports.check_ports((p, p.replace(proto="udp")), "x")      # tcp and udp may share a number


def test_check_ports_address_not_on_this_host():
    with pytest.raises(NetworkError, match="not an address of this host"):
        ports.check_ports((PortSpec(host_ip="192.0.2.123", host_port=18080, container_port=80),), "x")


def test_check_ports_ipv6_refused_for_slirp4netns():
    with pytest.raises(NetworkError, match="IPv4"):
        ports.check_ports((PortSpec(host_ip="::1", host_port=18080, container_port=80),), "slirp4netns",
                            ipv4_only=True)


def test_check_tun_names_the_fix(monkeypatch):
    monkeypatch.setattr(os, "access", lambda p, m: False)
    with pytest.raises(NetworkError) as e:
        helper.check_tun()
    assert "/dev/net/tun" in e.value.line() and "fix:" in e.value.line()


def test_none_and_host_reject_what_they_cannot_do():
    with pytest.raises(NetworkError):
        backend_for(NetSpec(mode="none", publish=(PortSpec(host_port=1, container_port=1),))).prepare()


# --- the hot-path rule ------------------------------------------------------------------------------------------
FORBIDDEN = ("json", "subprocess", "socket", "ctypes", "pyroute2", "re", "dataclasses", "typing", "enum",
             "signal", "argparse", "tomllib", "asyncio", "shutil", "tempfile", "threading",
             "runtime.net.forward", "runtime.net.ports")           # the last two: -p only


@pytest.mark.parametrize("mode", ["slirp4netns", "pasta"])
def test_default_path_imports_nothing_heavy(mode):
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from runtime.spec import NetSpec\n"
            "from runtime.net import backend_for\n"
            f"b = backend_for(NetSpec(mode={mode!r}))\n"
            "b._path = '/bin/true'; b._flags = ()\n"
            "b.resolv_conf(); b.hosts('x'); b.argv(1, '/p') if hasattr(b, '_log') and "
            f"{mode!r} == 'pasta' else b.argv(1, 3, 4)\n"
            "from runtime import tools\nfrom runtime.net import wait\n"
            "tools.find('sh'); wait.wait_for\n"
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"hot path imported: {out.strip()}"


def test_end_kills_without_waiting():
    pid = spawn.spawn(["/bin/sleep", "30"])
    status = wait.end(pid)
    if status is None:                          # not reaped yet: still exiting in the kernel
        status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


def test_private_run_dir_sweeps_dirs_of_dead_launchers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    base = tmp_path / "pirun"
    base.mkdir()
    dead = base / "slirp-999999999-abcd"          # no such PID
    dead.mkdir()
    (dead / "api.sock").write_text("")
    alive = base / f"slirp-{os.getpid()}-abcd"
    alive.mkdir()
    d = rundir.private_run_dir("slirp")
    assert not dead.exists() and alive.exists() and os.path.isdir(d)
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    rundir.remove_tree(d)
    assert not os.path.exists(d)


def test_forwarder_failure_report_becomes_one_error_line():
    from runtime.net import forward
    e = forward.failure(forward._report(NetworkError("-p 127.0.0.1:1:2/tcp: cannot listen", fix="choose another")).encode())
    assert e.line() == "-p 127.0.0.1:1:2/tcp: cannot listen; fix: choose another" and e.exit_code == 125
    assert forward.failure(forward._report(ValueError("odd")).encode()).line() == "port forwarder: ValueError: odd"


def test_slirp_sends_tcp_ports_to_the_forwarder_and_udp_to_its_api(monkeypatch):
    tcp = PortSpec(host_ip="127.0.0.1", host_port=8080, container_port=80)
    udp = PortSpec(host_ip="127.0.0.1", host_port=5353, container_port=53, proto="udp")
    monkeypatch.delenv("PIRUN_PORT_HANDLER", raising=False)
    assert slirp(publish=(tcp, udp))._split_ports() == ((tcp,), (udp,))
    monkeypatch.setenv("PIRUN_PORT_HANDLER", "slirp4netns")
    assert slirp(publish=(tcp, udp))._split_ports() == ((), (tcp, udp))


def test_default_network_per_use_lives_in_runtime_net(monkeypatch):
    from runtime import cli, hostconfig
    from runtime.net import DEFAULTS, default_mode
    assert default_mode() == DEFAULTS["foreground"]
    assert default_mode(detach=True) == DEFAULTS["detached"]
    assert default_mode(environ={"INVOCATION_ID": "0123"}) == DEFAULTS["service"]
    monkeypatch.setitem(DEFAULTS, "foreground", "pasta")            # the one place: cli follows it
    monkeypatch.setattr(hostconfig, "load", lambda: hostconfig.HostConfig())   # no host config: defaults
    rootfs = str(REPO / "rootfs_host")
    _, (spec, _) = cli.parse(["--allow-root", "--rootfs", rootfs, "/bin/true"], environ={})
    assert spec.net.mode == "pasta"
    _, (spec, _) = cli.parse(["--allow-root", "--rootfs", rootfs, "--net", "none", "/bin/true"], environ={})
    assert spec.net.mode == "none"


def test_pasta_ipv4_only_when_the_host_has_no_ipv6_route(monkeypatch, tmp_path):
    route = tmp_path / "ipv6_route"
    unreachable = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                   "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n")
    gateway = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
               "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n")
    route.write_text(unreachable)
    assert not pasta_mod.host_has_ipv6_route(str(route))
    route.write_text(unreachable + gateway)
    assert pasta_mod.host_has_ipv6_route(str(route))
    monkeypatch.setattr(pasta_mod, "host_has_ipv6_route", lambda: False)
    assert "-4" in pasta().argv(1, "/p")
    assert "-4" not in pasta(publish=(PortSpec(host_ip="::1", host_port=8443, container_port=443),)).argv(1, "/p")
    monkeypatch.setattr(pasta_mod, "host_has_ipv6_route", lambda: True)
    assert "-4" not in pasta().argv(1, "/p")
