"""Escape attempts from inside, as the container's root. Each attempt must fail inside; where the host could be
changed, the host is checked too. Every attempt is also tried where it makes sense with the default seccomp
filter turned off, so that the other layers (namespaces, dropped capabilities, no_new_privs, setsid) are shown to
hold on their own."""
import os
import pty
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import RUN, ROOTFS, container_user, mount_table, run, user_env, user_kwargs
from net_helpers import require_net_prereqs
from sec_helpers import parse_sys, probe, run_probe  # noqa: F401  (probe is a fixture)

UNCONFINED = ("--security-opt", "seccomp=unconfined")
BOTH = [(), UNCONFINED]
BOTH_IDS = ["seccomp", "unconfined"]


# --- mounts ------------------------------------------------------------------------------------------------

MOUNT_ATTEMPTS = [
    "mount -t tmpfs none /mnt",
    "mount -o remount,rw /proc/sys",
    "mount -o remount,rw /sys",
    "mount -o bind / /mnt",
    "mount -t proc proc /mnt",
    "umount /proc/keys",
    "umount -l /proc/sys",
    "umount -l /sys",
    "umount -l /etc/hostname",
    "mount -o remount,suid /",
]


@pytest.mark.parametrize("opts", BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("attempt", MOUNT_ATTEMPTS)
def test_mount_and_umount_fail(rootfs, opts, attempt):
    host_mounts = mount_table()
    r = run(list(opts) + ["/bin/sh", "-c", f"{attempt} && echo ESCAPED; "
                          "grep -c . /proc/self/mountinfo; wc -c < /proc/keys"])
    assert "ESCAPED" not in r.stdout, (attempt, r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1].strip() == "0", "/proc/keys was unmasked"
    assert mount_table() == host_mounts


def test_mount_syscalls_fail_through_every_api(probe):
    r = run_probe(probe, ["sys", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fspick", "move_mount",
                          "open_tree", "mount_setattr", "setns", "unshare_ns"])
    got = parse_sys(r.stdout)
    assert got and all(v == "EPERM" for v in got.values()), got


# --- /proc/sys and /sys ------------------------------------------------------------------------------------

WRITES = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
          "/proc/sysrq-trigger", "/proc/sys/kernel/modprobe", "/sys/kernel/uevent_helper",
          "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/fs/cgroup/cgroup.procs",
          "/sys/class/net/lo/mtu", "/proc/sys/net/ipv4/ip_forward"]


@pytest.mark.parametrize("opts", BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("path", WRITES)
def test_proc_sys_and_sys_cannot_be_written(rootfs, opts, path):
    before = None
    if os.path.exists(path) and path not in ("/proc/sysrq-trigger", "/proc/sys/vm/drop_caches"):
        with open(path) as f:
            before = f.read()
    r = run(list(opts) + ["/bin/sh", "-c", f"echo '|/tmp/pwn' > {path} && echo WRITTEN"])
    assert "WRITTEN" not in r.stdout, (path, r.stderr)
    assert r.returncode != 0
    if before is not None:
        with open(path) as f:
            assert f.read() == before, f"host {path} changed"


# --- host processes ----------------------------------------------------------------------------------------

@pytest.fixture
def host_sleeper():
    """A host process of the same user as the containers, with a unique command line."""
    token = f"{1000 + uuid.uuid4().int % 8000}.{os.getpid() % 1000}"
    p = subprocess.Popen(["sleep", token], env=user_env(), **user_kwargs())
    yield p, token
    p.kill()
    p.wait()


@pytest.mark.parametrize("opts", BOTH, ids=BOTH_IDS)
def test_host_processes_are_invisible_and_unkillable(rootfs, host_sleeper, opts, probe):
    p, token = host_sleeper
    r = run_probe(probe, ["kill", str(p.pid), "9"], opts=list(opts))
    assert r.stdout.strip() in ("kill ESRCH", "kill EPERM"), r.stdout
    r = run(list(opts) + ["/bin/sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; "
                          f"kill -9 {p.pid}; kill -9 -1; echo end"])
    assert token not in r.stdout, "a host process is visible inside"
    assert int(r.stdout.splitlines()[-2]) <= 6, r.stdout
    time.sleep(0.1)
    assert p.poll() is None, "the host process was killed from inside"


# --- abstract unix sockets ---------------------------------------------------------------------------------

@pytest.fixture
def abstract_listener():
    name = f"pirun-test-{uuid.uuid4().hex[:12]}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("\0" + name)
    s.listen(8)
    yield name
    s.close()


@pytest.mark.parametrize("net", ["none", "slirp4netns"])
def test_host_abstract_socket_is_unreachable_without_host_network(probe, abstract_listener, net):
    if net == "slirp4netns":            # fails naming slirp4netns or /dev/net/tun when the user cannot use them
        require_net_prereqs(user_kwargs(), user_env(), tools=("slirp4netns",))
    r = run_probe(probe, ["abstract", abstract_listener], net=net)
    assert r.stdout.strip() == "abstract ECONNREFUSED", (r.stdout, r.stderr)
    r = run_probe(probe, ["abstract", abstract_listener], opts=UNCONFINED, net=net)
    assert r.stdout.strip() == "abstract ECONNREFUSED", (r.stdout, r.stderr)


def test_abstract_probe_does_connect_with_host_network(probe, abstract_listener):
    """The control: with --net host the same probe reaches the same socket (the test above proves something)."""
    r = run(["-v", f"{probe}:/opt:ro", "/opt/probe", "abstract", abstract_listener], net="host")
    assert r.stdout.strip() == "abstract OK", (r.stdout, r.stderr)


# --- capabilities: unshare, setuid, file caps ----------------------------------------------------------------

def test_unshare_user_namespace_is_refused(rootfs):
    r = run(["/bin/sh", "-c", "unshare -U -r grep CapEff /proc/self/status; echo rc=$?"])
    assert "rc=1" in r.stdout and "CapEff" not in r.stdout, (r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr


def test_setuid_binary_gives_nothing(probe, shared_tmp):
    """A setuid-root (container root) binary run by an unprivileged container user keeps that user's euid:
    no_new_privs. The volume is not nosuid, so without no_new_privs the bit would take effect."""
    _n, uid, gid, _h = container_user()
    d = shared_tmp / "suid"
    d.mkdir()
    shutil.copy(probe / "probe", d / "probe-suid")
    os.chown(d / "probe-suid", uid, gid)            # the host user is root inside
    os.chmod(d / "probe-suid", 0o4755)
    r = run(["-v", f"{d}:/mnt", "/bin/sh", "-c",
             "grep -E ' /mnt ' /proc/self/mountinfo; grep NoNewPrivs /proc/self/status; ls -ln /mnt/probe-suid; "
             "/mnt/probe-suid setuid-exec 1000 /mnt/probe-suid euid"])
    assert r.returncode == 0, r.stderr
    mountline = r.stdout.splitlines()[0]
    assert "nosuid" not in mountline.split(" - ")[0], "volume is nosuid: the test would prove nothing"
    assert "NoNewPrivs:\t1" in r.stdout
    assert "-rwsr-xr-x    1 0        0" in r.stdout, r.stdout
    assert r.stdout.strip().endswith("euid 1000"), r.stdout


def test_busybox_su_and_setpriv_do_not_raise_capabilities(rootfs):
    r = run(["/bin/sh", "-c", "grep CapBnd /proc/self/status; "
             "setpriv --inh-caps +sys_admin grep -E 'Cap(Inh|Eff)' /proc/self/status; "
             "setpriv --ambient-caps +sys_admin grep -E 'Cap(Amb|Eff)' /proc/self/status; "
             "su -c 'grep CapEff /proc/self/status' root"])
    assert "CapBnd:\t00000000800405fb" in r.stdout, r.stdout
    sys_admin = 1 << 21
    for line in r.stdout.splitlines():
        if line.startswith("Cap"):
            assert not int(line.split()[1], 16) & sys_admin, line


# --- terminal injection (CVE-2017-5226) ------------------------------------------------------------------

def _open_pty():
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    _n, uid, gid, _h = container_user()
    os.fchown(slave, uid, gid)
    return master, slave


def _drain(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


def _run_on_terminal(argv, slave):
    """Run argv as the test user in a new session whose controlling terminal is our pty (like a user's shell)."""
    return subprocess.run(["setsid", "-c"] + argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=30, env=user_env(), cwd="/", **user_kwargs())


def _pending_input(slave):
    """What a process reading the terminal would get next (the injected bytes would sit in the input queue)."""
    dup = os.dup(slave)
    try:
        os.set_blocking(dup, False)
        return _drain(dup)
    finally:
        os.close(dup)


def test_tiocsti_harness_detects_injection(probe):
    """The control: the same probe, run directly on the host in the terminal's session, does inject."""
    master, slave = _open_pty()
    try:
        r = _run_on_terminal([str(probe / "probe"), "tiocsti", "0", "echo PWNED\n"], slave)
        assert r.stdout.strip() == "tiocsti OK", (r.stdout, r.stderr)
        time.sleep(0.05)
        assert b"PWNED" in _pending_input(slave) + _drain(master)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("opts", BOTH, ids=BOTH_IDS)
def test_no_injection_into_the_invoking_terminal(probe, opts):
    master, slave = _open_pty()
    try:
        argv = [str(RUN), "--net", "none", "--rootfs", str(ROOTFS), "-T", *opts, "-v", f"{probe}:/opt:ro",
                "/bin/sh", "-c", "/opt/probe tiocsti 0 'echo PWNED\n'; echo x > /dev/tty; echo tty=$?"]
        r = _run_on_terminal(argv, slave)
        assert "tiocsti EPERM" in r.stdout, (r.stdout, r.stderr)
        assert "tty=1" in r.stdout or "tty=2" in r.stdout, "the container has a controlling terminal"
        time.sleep(0.05)
        assert b"PWNED" not in _pending_input(slave) + _drain(master)
    finally:
        os.close(master)
        os.close(slave)


# --- kernel keys -------------------------------------------------------------------------------------------

def test_kernel_keyring_is_out_of_reach(probe):
    r = run_probe(probe, ["sys", "keyctl", "add_key", "request_key"])
    assert parse_sys(r.stdout) == {"keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM"}, r.stdout


# --- inherited file descriptors --------------------------------------------------------------------------

def test_inherited_host_fds_do_not_reach_the_container(rootfs, shared_tmp):
    """An fd of a host directory left open (without CLOEXEC) by whoever starts run.py would be a way out of the
    rootfs (fchdir / openat through /proc/self/fd): the command must not inherit it."""
    (shared_tmp / "host-secret").write_text("secret\n")
    os.chmod(shared_tmp / "host-secret", 0o644)
    fd = os.open(shared_tmp, os.O_RDONLY | os.O_DIRECTORY)
    fd2 = os.open(shared_tmp / "host-secret", os.O_RDONLY)
    try:
        argv = [str(RUN), "--net", "none", "--rootfs", str(ROOTFS), "/bin/sh", "-c",
                f"ls /proc/self/fd/ | tr '\\n' ' '; echo; cat /proc/self/fd/{fd}/host-secret; cat /proc/self/fd/{fd2}"]
        r = subprocess.run(argv, pass_fds=(fd, fd2), capture_output=True, text=True, timeout=30, env=user_env(),
                           cwd="/", **user_kwargs())
    finally:
        os.close(fd)
        os.close(fd2)
    assert "secret" not in r.stdout, f"a host fd leaked into the container: {r.stdout!r}"
    assert r.stdout, (r.returncode, r.stderr)
    fds = r.stdout.splitlines()[0].split()
    assert str(fd) not in fds and str(fd2) not in fds, fds


# --- the --init reaper is the host's python ------------------------------------------------------------------

def test_init_reaper_binary_cannot_be_overwritten(rootfs):
    """With --init, PID 1 is a host python (runc CVE-2019-5736 overwrote the runtime through /proc/PID/exe):
    it belongs to real root, which is not mapped in the container (the nobody uid inside), so opening it for
    writing is refused by its permissions (EACCES). "Text file busy" (ETXTBSY) is not enough: that is what a
    user who may write the file gets while it runs, and the write goes through once it no longer runs."""
    r = run(["--init", "/bin/sh", "-c", "readlink /proc/1/exe; stat -L -c 'owner=%u mode=%a' /proc/1/exe; "
             "echo x >> /proc/1/exe && echo WRITTEN"])
    assert "WRITTEN" not in r.stdout, r.stdout
    lines = r.stdout.splitlines()
    assert "python" in lines[0], r.stdout
    assert lines[1].startswith("owner=65534 "), f"PID 1's binary is owned by a uid mapped inside: {r.stdout}"
    assert "Permission denied" in r.stderr, r.stderr
    assert "Text file busy" not in r.stderr, r.stderr


def test_inherited_fd_at_the_top_of_the_limit_does_not_reach_the_container(rootfs, shared_tmp):
    """The same with the highest fd the hard limit allows (Debian/systemd user sessions: 524288, so fds above
    65535 are possible): a bounded close loop would miss it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = hard - 1
    (shared_tmp / "host-secret").write_text("secret\n")
    os.chmod(shared_tmp / "host-secret", 0o644)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd = os.open(shared_tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.dup2(fd, top)
        argv = [str(RUN), "--net", "none", "--rootfs", str(ROOTFS), "/bin/sh", "-c",
                f"ls /proc/self/fd/ | tr '\\n' ' '; echo; cat /proc/self/fd/{top}/host-secret"]
        r = subprocess.run(argv, pass_fds=(top,), capture_output=True, text=True, timeout=30, env=user_env(),
                           cwd="/", **user_kwargs())
    finally:
        os.close(fd)
        try:
            os.close(top)
        except OSError:
            pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "secret" not in r.stdout, f"fd {top} leaked into the container: {r.stdout!r}"
    assert r.stdout, (r.returncode, r.stderr)
    assert str(top) not in r.stdout.splitlines()[0].split()


# --- the same from a 32-bit userland (i386 on x86_64, armhf on aarch64) --------------------------------------
# The kernel's compat syscall table and the filter's block for that ABI: the attempts must meet the same
# answers as from the native rootfs.

from compat_helpers import compat_rootfs, probe32  # noqa: E402,F401  (fixtures)


@pytest.mark.parametrize("attempt", MOUNT_ATTEMPTS)
def test_32bit_mount_and_umount_fail_as_native_ones_do(rootfs, compat_rootfs, attempt):
    host_mounts = mount_table()
    script = f"{attempt} && echo ESCAPED; grep -c . /proc/self/mountinfo; wc -c < /proc/keys"
    native = run(["/bin/sh", "-c", script])
    r = run(["/bin/sh", "-c", script], rootfs=compat_rootfs)
    assert r.returncode == 0, (attempt, r.returncode, r.stdout, r.stderr)
    assert "ESCAPED" not in r.stdout, (attempt, r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1].strip() == "0", "/proc/keys was unmasked"
    assert (r.returncode, r.stdout, r.stderr) == (native.returncode, native.stdout, native.stderr)
    assert mount_table() == host_mounts


def test_32bit_unshare_user_namespace_is_refused(compat_rootfs):
    r = run(["/bin/sh", "-c", "unshare -U -r grep CapEff /proc/self/status; echo rc=$?"], rootfs=compat_rootfs)
    assert "rc=1" in r.stdout and "CapEff" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr


def test_32bit_mount_and_keyring_syscalls_fail(probe32):
    names = ["mount", "umount2", "umount_old", "pivot_root", "fsopen", "fsmount", "fspick", "move_mount",
             "open_tree", "mount_setattr", "setns", "unshare_ns", "unshare_user", "clone_user", "keyctl",
             "add_key", "request_key"]
    r = run_probe(probe32, ["sys"] + names)
    got = parse_sys(r.stdout)
    assert list(got) == names, (r.returncode, r.stdout, r.stderr)
    assert all(v in ("EPERM", "ABSENT") for v in got.values()) and got["mount"] == "EPERM", got


def test_32bit_host_processes_are_unkillable(host_sleeper, probe32):
    p, _token = host_sleeper
    r = run_probe(probe32, ["kill", str(p.pid), "9"])
    assert r.stdout.strip() in ("kill ESRCH", "kill EPERM"), (r.returncode, r.stdout, r.stderr)
    r = run_probe(probe32, ["kill", "1", "0"])                 # ordinary calls work: PID 1 is the probe itself
    assert r.stdout.strip() == "kill OK", (r.returncode, r.stdout, r.stderr)
    time.sleep(0.1)
    assert p.poll() is None, "the host process was killed from inside"
