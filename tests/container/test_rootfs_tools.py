"""The default rootfs's network tools, as a user meets them: `ping` with the default options (no NET_RAW, ICMP
datagram sockets allowed by the container's own ping_group_range) and `wget -T` (busybox 1.35's segfaults),
on rootfs_host and, under qemu-user, on rootfs_arm. Every dynamically linked program of the rootfs finds its
shared libraries inside the tree.

Traffic stays on this machine: the slirp4netns gateway, the host's 127.0.0.1 (--net host, or the gateway with
--allow-host-loopback) and a server this test starts there."""
import os

import pytest

from conftest import ROOTFS, ROOTFS_ARM, check_rootfs, run, user_env, user_kwargs
from net_helpers import HostHTTP, require_net_prereqs
from runtime import rootfs as rf
from runtime.fs import resolve_in_root

BODY = b"hello from the host\n"


@pytest.fixture(scope="module", autouse=True)
def prereqs():
    require_net_prereqs(user_kwargs(), user_env(), tools=("slirp4netns",))


@pytest.fixture(scope="module", params=["rootfs_host", "rootfs_arm"])
def tree(request):
    if request.param == "rootfs_arm" and os.uname().machine != "aarch64":
        registered, enabled, _flags, _ = rf.binfmt_entry("aarch64")
        if not (registered and enabled):
            pytest.fail("prerequisite missing: qemu-aarch64 in binfmt_misc; fix: apt-get install "
                        "qemu-user-static binfmt-support (scripts/setup)", pytrace=False)
    return check_rootfs(ROOTFS if request.param == "rootfs_host" else ROOTFS_ARM, request.param)


def shown(r):
    return f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}"


def test_default_capabilities_have_no_net_raw(tree):
    r = run(["/bin/sh", "-c", "grep CapEff /proc/self/status"], rootfs=tree, net=None)
    assert r.returncode == 0, shown(r)
    assert not int(r.stdout.split()[1], 16) & (1 << 13), f"CAP_NET_RAW (13) is in the default set: {r.stdout}"


def test_ping_gateway_with_default_options(tree):
    """The seeds' demo: `ping -c 2 10.0.2.2` in the default container (default network, capabilities, rootfs)."""
    r = run(["ping", "-c", "2", "-W", "5", "10.0.2.2"], rootfs=tree, net=None, timeout=60)
    assert r.returncode == 0, shown(r)
    assert "2 packets transmitted, 2 received" in r.stdout, shown(r)


def test_ping_host_loopback_with_net_host(tree):
    """In the host's network namespace the host's ping_group_range (scripts/setup, pirun_prereqs) decides."""
    r = run(["ping", "-c", "2", "-W", "5", "127.0.0.1"], rootfs=tree, net="host", timeout=60)
    assert r.returncode == 0, shown(r)
    assert "2 packets transmitted, 2 received" in r.stdout, shown(r)


def test_ping_host_through_the_gateway_with_allow_host_loopback(tree):
    r = run(["--allow-host-loopback", "ping", "-c", "2", "-W", "5", "10.0.2.2"], rootfs=tree, net=None,
            timeout=60)
    assert r.returncode == 0, shown(r)
    assert "2 packets transmitted, 2 received" in r.stdout, shown(r)


def test_wget_with_timeout_flag_over_net_host(tree):
    with HostHTTP(BODY) as srv:
        r = run(["wget", "-T", "5", "-O-", f"http://127.0.0.1:{srv.port}/"], rootfs=tree, net="host", timeout=60)
    assert r.returncode == 0, shown(r)
    assert r.stdout == BODY.decode(), shown(r)


def test_the_shell_runs_the_real_ping_and_wget(tree):
    """What a user types at the container's /bin/sh prompt: the shell looks ping and wget up on PATH (busybox's
    static ash would run its own applets: a raw-socket ping that fails, a wget that crashes on -T)."""
    with HostHTTP(BODY) as srv:
        r = run(["--allow-host-loopback", "/bin/sh", "-c",
                 f"type ping wget; ping -c 2 -W 5 10.0.2.2 >/dev/null && echo ping-ok; "
                 f"wget -q -T 5 -O- http://10.0.2.2:{srv.port}/"], rootfs=tree, net=None, timeout=60)
    assert r.returncode == 0, shown(r)
    assert r.stdout == f"ping is /bin/ping\nwget is /usr/bin/wget\nping-ok\n{BODY.decode()}", shown(r)


def test_wget_through_slirp4netns_only_with_allow_host_loopback(tree):
    with HostHTTP(BODY) as srv:
        url = f"http://10.0.2.2:{srv.port}/"
        allowed = run(["--allow-host-loopback", "wget", "-T", "5", "-O-", url], rootfs=tree, net=None, timeout=60)
        denied = run(["wget", "-T", "5", "-t", "1", "-O-", url], rootfs=tree, net=None, timeout=60)
    assert allowed.returncode == 0, shown(allowed)
    assert allowed.stdout == BODY.decode(), shown(allowed)
    assert denied.returncode == 4, shown(denied)             # wget's "network failure"
    assert denied.stdout == "", shown(denied)


def test_every_program_finds_its_libraries_inside_the_tree(tree):
    """No container: each ELF file's interpreter and DT_NEEDED sonames resolve inside the rootfs, in the
    directories Debian's ld.so searches without a cache (lib, usr/lib and their multiarch subdirectories)."""
    checked = 0
    for top, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            interp, needed = rf.elf_dynamic(path)
            if interp is None and not needed:
                continue
            rel = os.path.relpath(path, tree)
            assert interp is None or resolve_in_root(str(tree), interp), f"{rel}: no {interp}"
            for soname in needed:
                assert rf.find_library(str(tree), soname), f"{rel} needs {soname}, absent from the rootfs"
            checked += 1
    assert checked >= 3, "ping, wget and libc should all be dynamically linked ELF files"
