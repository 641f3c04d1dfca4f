"""Container networking through run.py (issue 3): slirp4netns (default), pasta, none; published ports; host
loopback; DNS files; helpers never outlive run.py (normal exit, SIGTERM, kill -9); 20 containers at once.

Traffic stays on this machine: the host side binds 127.0.0.1 only; containers reach it through their gateway
only with --allow-host-loopback. On a host whose /dev/net/tun is 0600 root these tests fail naming it (see
tests/net_helpers.py for the dev shim)."""
import concurrent.futures
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import container_user, run, start, user_env, user_kwargs
from net_helpers import (HostHTTP, free_port, helpers_of, require_net_prereqs, still_alive, wait_http)
from runtime.net import host_search_domains
from runtime.net.pasta import host_nameservers


@pytest.fixture(scope="module", autouse=True)
def prereqs():
    require_net_prereqs(user_kwargs(), user_env())


def sh(script, net="slirp4netns", extra=(), rootfs=None, timeout=60):
    return run(list(extra) + ["/bin/sh", "-c", script], rootfs=rootfs, net=net, timeout=timeout)


def ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}"
    return r.stdout


# --- what the container sees ------------------------------------------------------------------------------------
def test_slirp4netns_tap0_address_route_mtu(rootfs):
    out = ok(sh("ip -o -4 addr show dev tap0; ip route; cat /sys/class/net/tap0/mtu; "
                "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"))
    assert "inet 10.0.2.100/24" in out
    assert "default via 10.0.2.2 dev tap0" in out
    lines = out.split("\n")
    assert "65520" in lines, out
    assert int(lines[-2], 16) & 1, f"lo is not up: {out}"            # IFF_UP


def test_pasta_interface_mtu_and_default_route(rootfs):
    out = ok(sh("ip -o -4 addr; ip route; for i in /sys/class/net/*; do echo ${i##*/} $(cat $i/mtu); done",
                net="pasta"))
    assert "default via" in out
    ifaces = dict(ln.split() for ln in out.splitlines() if len(ln.split()) == 2 and ln.split()[1].isdigit())
    assert any(name != "lo" and mtu == "65520" for name, mtu in ifaces.items()), out


def test_resolv_conf_and_hosts_slirp4netns(rootfs):
    out = ok(sh("cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; hostname", extra=["--hostname", "box1"]))
    resolv, hosts, _ = out.split("---\n")
    assert resolv.splitlines()[0] == "nameserver 10.0.2.3"
    want = host_search_domains()
    if want:
        assert f"search {' '.join(want)}" in resolv
    assert "127.0.0.1\tlocalhost" in hosts
    assert "10.0.2.100\tbox1" in hosts


def test_resolv_conf_pasta_lists_reachable_host_nameservers(rootfs):
    out = ok(sh("cat /etc/resolv.conf", net="pasta"))
    for ns in host_nameservers():
        if not ns.startswith("127.") and ns != "::1":
            assert f"nameserver {ns}" in out
        else:
            assert f"nameserver {ns}\n" not in out


def test_net_none_has_only_lo_up(rootfs):
    out = ok(sh("ls /sys/class/net; cat /sys/class/net/lo/flags; cat /etc/resolv.conf | wc -c", net="none"))
    lines = out.split()
    assert lines[0] == "lo" and len(lines) == 3, out
    assert int(lines[1], 16) & 1


def test_ping_gateway(rootfs):
    """slirp4netns answers ICMP echo to its gateway itself; the rootfs's ping (iputils) uses an ICMP datagram
    socket, allowed by the container's ping_group_range: no NET_RAW needed (the default capability set)."""
    out = ok(sh("ping -c 1 -W 5 10.0.2.2"))
    assert "1 received" in out or "1 packets received" in out, out


def test_ping_group_range_set_inside_container(rootfs):
    """podman's default_sysctls trick: the container's own netns lets its root group use ICMP datagram
    sockets (ping without NET_RAW); the init side writes it before /proc/sys becomes read-only."""
    out = ok(sh("cat /proc/sys/net/ipv4/ping_group_range"))
    assert out.split() == ["0", "0"], out


# --- host loopback ------------------------------------------------------------------------------------------------
def test_allow_host_loopback_reaches_host_127_through_gateway(rootfs):
    with HostHTTP(b"hello from the host\n") as srv:
        url = f"http://10.0.2.2:{srv.port}/"
        r = sh(f"wget -q -O - {url}", extra=["--allow-host-loopback"])
        assert ok(r) == "hello from the host\n"
        r = sh(f"wget -q -O - {url}")
        assert r.returncode != 0, f"host loopback reachable without --allow-host-loopback: {r.stdout!r}"
        assert "hello" not in r.stdout


def test_pasta_allow_host_loopback_maps_gateway_to_host(rootfs):
    with HostHTTP(b"hello pasta\n") as srv:
        r = sh(f"gw=$(ip route | awk '/^default/ {{print $3}}'); wget -q -O - http://$gw:{srv.port}/",
               net="pasta", extra=["--allow-host-loopback"])
        assert ok(r) == "hello pasta\n"


# --- published ports ----------------------------------------------------------------------------------------------
HTTPD = "mkdir -p /dev/shm/www && echo {body} > /dev/shm/www/index.html && exec httpd -f -p 80 -h /dev/shm/www"


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_host_fetches_from_container_through_published_port(rootfs, net):
    port = free_port()
    proc = start(["-p", f"127.0.0.1:{port}:80", "/bin/sh", "-c", HTTPD.format(body=f"hello-{net}")], net=net)
    try:
        body = wait_http(f"http://127.0.0.1:{port}/")
        assert body == f"hello-{net}\n".encode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, err


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_8_mib_each_way_through_a_published_port_arrive_intact(rootfs, net):
    """Upload: the host sends 8 MiB and half-closes; the container reads to the end and answers the digest.
    Download: httpd serves 8 MiB made in the container; the host compares its digest with the container's."""
    import hashlib
    data = os.urandom(8 << 20)
    port = free_port()
    # nc -e: the shell's stdin and stdout are the connection. It can only answer once the host's half-close,
    # passed on by the forwarder, has ended its input while the way back stays open.
    script = ("printf 'cat > /dev/shm/in; sha256sum /dev/shm/in\\n' > /dev/shm/up.sh; "
              "nc -l -p 80 -e /bin/sh /dev/shm/up.sh & n=$!; "
              "until netstat -ltn | grep -q ':80 '; do usleep 10000; done; echo up; wait $n")
    proc = start(["-p", f"127.0.0.1:{port}:80", "/bin/sh", "-c", script], net=net)
    try:
        assert proc.stdout.readline() == "up\n", proc.stderr.read() if proc.poll() is not None else ""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := c.recv(65536):
                reply += chunk
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert reply.split()[:1] == [hashlib.sha256(data).hexdigest().encode()], reply

    port = free_port()
    script = ("mkdir -p /dev/shm/www && dd if=/dev/urandom of=/dev/shm/www/big bs=1M count=8 2>/dev/null && "
              "sha256sum /dev/shm/www/big && exec httpd -f -p 80 -h /dev/shm/www")
    proc = start(["-p", f"127.0.0.1:{port}:80", "/bin/sh", "-c", script], net=net)
    try:
        want = proc.stdout.readline().split()[0]
        body = wait_http(f"http://127.0.0.1:{port}/big")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert len(body) == 8 << 20 and hashlib.sha256(body).hexdigest() == want


def test_published_port_does_not_reach_a_service_bound_to_the_containers_loopback(rootfs):
    """-p reaches the container's address, not its loopback: a service on 127.0.0.1 inside stays private
    (as with podman), while one on 0.0.0.0 in the same container answers."""
    import urllib.request
    private, public = free_port(), free_port()
    script = ("mkdir -p /dev/shm/www && echo public > /dev/shm/www/index.html && "
              "httpd -p 127.0.0.1:80 -h /dev/shm/www && exec httpd -f -p 81 -h /dev/shm/www")
    proc = start(["-p", f"127.0.0.1:{private}:80", "-p", f"127.0.0.1:{public}:81", "/bin/sh", "-c", script],
                 net="slirp4netns")
    try:
        assert wait_http(f"http://127.0.0.1:{public}/") == b"public\n"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{private}/", timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_published_port_is_released_after_kill_9_of_run_py(rootfs):
    """The port forwarder ends with run.py even after kill -9: the host port can be bound again at once."""
    port = free_port()
    proc = start(["-p", f"127.0.0.1:{port}:80", "/bin/sh", "-c", "echo up; exec sleep 60"], net="slirp4netns")
    assert proc.stdout.readline() == "up\n"
    socket.create_connection(("127.0.0.1", port)).close()       # someone listens: the forwarder
    proc.kill()
    proc.communicate(timeout=20)
    deadline = time.monotonic() + 2
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            break
        except OSError:
            assert time.monotonic() < deadline, f"host port {port} still held 2 s after kill -9 of run.py"
            time.sleep(0.05)
        finally:
            s.close()


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_publish_port_in_use_is_one_line_125_and_nothing_runs(rootfs, net):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    uid = container_user()[1]
    try:
        before = set(_helpers(uid))
        r = run(["-p", f"127.0.0.1:{port}:80", "/bin/true"], net=net)
    finally:
        s.close()
    assert r.returncode == 125, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0], r.stderr
    assert not _orphans(set(_helpers(uid)) - before), "a helper was left running"


def test_publish_ipv6_host_address_with_slirp4netns_is_an_error(rootfs):
    r = run(["-p", f"[::1]:{free_port()}:80", "/bin/true"], net="slirp4netns")
    assert r.returncode == 125 and len(r.stderr.strip().splitlines()) == 1, r
    assert "IPv4" in r.stderr


def _orphans(keys):
    """Helpers whose parent is not a live run.py (another test's container may be running meanwhile)."""
    out = []
    for pid, _start in keys:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                if b"run.py" in f.read():
                    continue
        except OSError:
            continue
        out.append(pid)
    return out


def _helpers(uid):
    from net_helpers import helper_processes
    return helper_processes(uid)


# --- helpers end with run.py ----------------------------------------------------------------------------------
def _start_and_find_helper(net, script="echo up; exec sleep 60"):
    proc = start(["/bin/sh", "-c", script], net=net, stdin=subprocess.PIPE)
    assert proc.stdout.readline() == "up\n", proc.stderr.read() if proc.poll() is not None else "no output"
    helpers = helpers_of(proc.pid)
    assert len(helpers) == 1, f"expected one {net} helper child of run.py, found {helpers}"
    return proc, list(helpers)


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_no_helper_left_after_normal_exit(rootfs, net):
    proc, keys = _start_and_find_helper(net, "echo up; read x; exit 3")
    out, err = proc.communicate(timeout=20)       # closes stdin: `read` gets EOF, the command exits 3
    assert proc.returncode == 3, err
    assert not still_alive(keys, 0.5), f"{net} still running after run.py exited"


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_no_helper_left_after_sigterm(rootfs, net):
    proc, keys = _start_and_find_helper(net)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not still_alive(keys, 0.5), f"{net} still running after SIGTERM of run.py"


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_no_helper_left_after_kill_9(rootfs, net):
    proc, keys = _start_and_find_helper(net)
    proc.kill()
    proc.communicate(timeout=20)
    assert not still_alive(keys, 2.0), f"{net} survived kill -9 of run.py"


# --- many at once ---------------------------------------------------------------------------------------------
def test_20_parallel_containers_each_get_working_network(rootfs):
    with HostHTTP(b"parallel-ok\n") as srv:
        def one(i):
            return sh(f"wget -q -O - http://10.0.2.2:{srv.port}/ && ip -o -4 addr show dev tap0",
                      extra=["--allow-host-loopback", "--hostname", f"c{i}"], timeout=120)
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(one, range(20)))
    bad = [(i, r.returncode, r.stderr) for i, r in enumerate(results)
           if r.returncode or not r.stdout.startswith("parallel-ok\n") or "10.0.2.100/24" not in r.stdout]
    assert not bad, bad


@pytest.mark.parametrize("net", ["slirp4netns", "pasta"])
def test_dead_helper_is_reported_once_and_the_container_goes_on(rootfs, net):
    proc, keys = _start_and_find_helper(net, "echo up; read x; exit 4")
    os.kill(keys[0][0], signal.SIGKILL)
    assert not still_alive(keys, 2.0)
    time.sleep(0.2)                                   # let run.py notice through the helper's pidfd
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 4, err
    notices = [ln for ln in err.splitlines() if "no network any more" in ln]
    assert len(notices) == 1 and net in notices[0] and "signal 9" in notices[0], err
