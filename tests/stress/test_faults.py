"""Faults: kill -9 of run.py at random points of its start-up and run (100 times), a rootfs removed while a
container runs or starts, and the claim that run.py writes no state files (so a read-only or full state or temp
directory cannot break it), checked with strace and with read-only and full /tmp, /var/tmp, /dev/shm, HOME and
XDG_RUNTIME_DIR in a private mount namespace."""
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, RUN, ROOTFS, container_user, missing, run, start, user_env, user_kwargs
from net_helpers import require_net_prereqs
from stress_helpers import Snapshot, comm, subreaper, wait_no_descendants

KILLS = 100


def _family(pid):
    """pid's descendants, quickly (/proc/PID/task/TID/children): the stage is read right before the kill."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def _stage(pids):
    names = {comm(p) for p in pids}
    if "sleep" in names:
        return "running"
    if "pirun-init" in names:
        return "container setup"
    if "slirp4netns" in names:
        return "network helper up"
    if "pirun-ns" in names or "newuidmap" in names or "newgidmap" in names:
        return "namespaces/ID maps"
    return "launcher only"


def need_slirp4netns():
    """Fail naming slirp4netns or /dev/net/tun (and the fix) when the test user cannot use them."""
    require_net_prereqs(user_kwargs(), user_env(), tools=("slirp4netns",))


@pytest.mark.parametrize("net,kills", [("none", KILLS), ("slirp4netns", 40)])
def test_kill_9_at_random_points_leaves_nothing(rootfs, net, kills):
    if net == "slirp4netns":
        need_slirp4netns()
    seed = int(os.environ.get("PIRUN_FAULT_SEED", time.time()))
    rng = random.Random(seed)
    stages = Counter()
    with subreaper():
        snap = Snapshot()
        for i in range(kills):
            p = start(["/bin/sh", "-c", "sleep 100 & sleep 100"], net=net, stdin=subprocess.DEVNULL)
            # start-up takes ~15-30 ms here (python included): half the kills land in it, half while the command runs
            time.sleep(rng.uniform(0, 0.03) if i % 2 else rng.uniform(0.03, 0.2))
            stages[_stage(_family(p.pid))] += 1
            os.kill(p.pid, signal.SIGKILL)
            p.communicate()
            t = time.monotonic()
            left = wait_no_descendants(1.0)
            assert left == [], (f"kill -9 #{i} (seed {seed}): still alive {time.monotonic() - t:.2f} s later: "
                                f"{left}")
        snap.assert_same("kill -9 loop")
    print(f"kill -9 (--net {net}) landed in: {dict(stages)} (seed {seed})")
    assert stages["running"] >= kills // 10 and kills - stages["running"] >= kills // 10, dict(stages)


def _user_rootfs():
    _n, uid, gid, _h = container_user()
    parent = Path(tempfile.mkdtemp(prefix="pirun-stress-", dir="/tmp"))
    os.chown(parent, uid, gid)
    os.chmod(parent, 0o755)
    dest = parent / "rootfs"
    r = subprocess.run(["cp", "-a", str(ROOTFS), str(dest)], capture_output=True, text=True, **user_kwargs())
    if r.returncode != 0:
        missing(f"a copy of the rootfs as the test user ({r.stderr.strip()})")
    return parent, dest


def _rm_as_user(path):
    subprocess.run(["rm", "-rf", str(path)], check=True, **user_kwargs())


def _clean(r_stderr):
    assert "Traceback" not in r_stderr, r_stderr
    errors = [line for line in r_stderr.splitlines() if line.startswith("run.py:")]
    assert len(errors) <= 1, r_stderr


def test_rootfs_removed_while_the_container_runs(rootfs):
    parent, dest = _user_rootfs()
    try:
        with subreaper():
            snap = Snapshot()
            p = subprocess.Popen([str(RUN), "--net", "none", "--rootfs", str(dest), "/bin/sh", "-c",
                                  "echo started; sleep 1; ls /bin > /dev/null; echo ls=$?; exit 3"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env(), cwd="/",
                                 **user_kwargs())
            assert p.stdout.readline() == "started\n"
            _rm_as_user(dest)
            assert not dest.exists()
            out, err = p.communicate(timeout=20)
            assert p.returncode == 3, (p.returncode, out, err)      # the command's own status, no hang
            _clean(err)
            snap.assert_same("rootfs removed")
            r = run(["true"], rootfs=dest)
            assert r.returncode == 125 and "rootfs" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_rootfs_removed_during_start_up(rootfs):
    rng = random.Random(1)
    outcomes = Counter()
    with subreaper():
        snap = Snapshot()
        for i in range(8):
            parent, dest = _user_rootfs()
            try:
                p = subprocess.Popen([str(RUN), "--net", "none", "--rootfs", str(dest), "/bin/sh", "-c", "exit 4"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env(),
                                     cwd="/", **user_kwargs())
                time.sleep(rng.uniform(0, 0.06))
                _rm_as_user(dest)
                out, err = p.communicate(timeout=20)
                assert p.returncode in (4, 125, 126, 127), (p.returncode, err)
                _clean(err)
                if p.returncode == 125:
                    assert err.startswith("run.py: error: "), err
                outcomes[p.returncode] += 1
            finally:
                shutil.rmtree(parent, ignore_errors=True)
        snap.assert_same("rootfs removed during start-up")
    print(f"rootfs removed during start-up: exit codes {dict(outcomes)}")


# --- state: there is none ----------------------------------------------------------------------------------

_WRITE = re.compile(r'^\d+ +(\w+)\((?:AT_FDCWD|\d+), "([^"]*)"(?:, ([A-Z_|]+))?')


def test_run_py_writes_no_state_files(rootfs):
    """Every file run.py and its helpers create, write or remove, as strace sees it: only the ID maps (through
    newuidmap/newgidmap), files in the container's own fresh /dev tmpfs and its own network namespace's
    sysctls."""
    if shutil.which("strace") is None:
        missing("strace", "apt-get install strace")
    name, _uid, _gid, _home = container_user()
    with tempfile.NamedTemporaryFile(prefix="pirun-stress-strace-", dir="/tmp") as log:
        calls = "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink," \
                "unlinkat,truncate,mknodat,rmdir"
        r = subprocess.run(["strace", "-f", "-qq", "-u", name, "-o", log.name, "-e", f"trace={calls}",
                            "-e", "status=successful", str(RUN), "--net", "none", "--rootfs", str(ROOTFS),
                            "-v", "/usr/share/common-licenses:/mnt:ro", "/bin/sh", "-c", "echo hi"],
                           capture_output=True, text=True, env=user_env(), cwd="/", timeout=60)
        assert r.returncode == 0 and r.stdout == "hi\n", (r.returncode, r.stderr)
        lines = Path(log.name).read_text().splitlines()
    writes = []
    for line in lines:
        m = _WRITE.match(line)
        if not m:
            continue
        call, path, flags = m.groups()
        if call in ("open", "openat") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", flags or ""):
            continue
        writes.append((call, path))
    dev = f"{ROOTFS}/dev/"
    allowed = {"uid_map", "gid_map", "setgroups"}
    # /proc/sys/net/*: sysctls of the container's own network namespace (ping_group_range, as podman sets)
    # /proc/self/fd/N/.pirun-*: the generated /etc files, written through the fd init holds on the /dev tmpfs it
    # has just mounted (a volume bound over /dev later cannot redirect them)
    generated = re.compile(r"/proc/self/fd/\d+/\.pirun-(hostname|hosts|resolv\.conf)$")
    unexpected = [(c, p) for c, p in writes
                  if not (p.startswith((dev, "/sys/fs/cgroup/", "/proc/sys/net/")) or os.path.basename(p) in allowed
                          or generated.match(p))]
    assert writes, "strace saw no write at all: the trace is not working"
    assert unexpected == [], f"run.py wrote outside the container's own tmpfs: {unexpected}"


_NS_REPO, _NS_ROOTFS = "/run/pirun-fault/repo", "/run/pirun-fault/rootfs"
# run.py and the rootfs as seen from the private mount namespace: bound under /run first, since the checkout
# itself may live under one of the directories the tests cover (CI may clone into /tmp).
_NS_ARGV = [f"{_NS_REPO}/runtime/run.py", "--net", "none", "--rootfs", _NS_ROOTFS, "/bin/sh", "-c", "'echo ok'"]


def _private_ns_run(setup, argv):
    """Run `setup` (shell, as root) then run.py as the test user, in a private mount namespace of our own."""
    name, uid, _gid, home = container_user()
    keep = (f"mkdir -p {_NS_REPO} {_NS_ROOTFS}; mount --bind {REPO} {_NS_REPO}; "
            f"mount --bind {ROOTFS} {_NS_ROOTFS}")
    script = (f"set -e; {keep}; {setup}; exec runuser -u {name} -- env -i PATH=/usr/bin:/bin HOME={home} "
              f"TMPDIR=/tmp XDG_RUNTIME_DIR=/run/user/{uid} " + " ".join(argv))
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)


def test_read_only_temp_and_home_dirs_do_not_matter(rootfs):
    _n, uid, _g, home = container_user()
    dirs = ["/tmp", "/var/tmp", "/dev/shm", home, f"/run/user/{uid}"]
    setup = "; ".join(f"mkdir -p {d}; mount -t tmpfs -o ro,size=64k tmpfs {d}" for d in dirs)
    r = _private_ns_run(setup, _NS_ARGV)
    assert r.returncode == 0 and r.stdout == "ok\n", (r.returncode, r.stderr)


def test_full_temp_and_home_dirs_do_not_matter(rootfs):
    _n, uid, _g, home = container_user()
    dirs = ["/tmp", "/var/tmp", "/dev/shm", home, f"/run/user/{uid}"]
    setup = "; ".join(f"mkdir -p {d}; mount -t tmpfs -o size=64k,mode=1777 tmpfs {d}; "
                      f"(dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null || true)" for d in dirs)
    r = _private_ns_run(setup + "; df -k /tmp | tail -1 | awk '{exit ($4 != 0)}'", _NS_ARGV)
    assert r.returncode == 0 and r.stdout == "ok\n", (r.returncode, r.stderr)


# --- the network helper dies -------------------------------------------------------------------------------

def test_network_helper_killed_while_the_container_runs(rootfs):
    """The user is told once on stderr; run.py still returns the command's status; nothing is left."""
    need_slirp4netns()
    with subreaper():
        snap = Snapshot()
        p = start(["/bin/sh", "-c", "echo started; sleep 1; echo end; exit 5"], net="slirp4netns",
                  stdin=subprocess.DEVNULL)
        try:
            assert p.stdout.readline() == "started\n"
            helpers = [q for q in _family(p.pid) if comm(q) == "slirp4netns"]
            assert len(helpers) == 1, [(q, comm(q)) for q in _family(p.pid)]
            os.kill(helpers[0], signal.SIGKILL)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 5, (p.returncode, err)
        assert out == "end\n"
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("run.py: warning: ") and "slirp4netns" in lines[0], err
        snap.assert_same("network helper killed")
