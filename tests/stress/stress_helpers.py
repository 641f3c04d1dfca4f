"""Helpers of the stress and fault suites: what "nothing left behind" means, measured without being fooled by
other engineers' containers running on the same machine at the same time.

* processes: the test process becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so anything a run.py leaves
  behind, even after kill -9, is re-parented to us: "nothing left" is "we have no descendants".
* mounts: the host's mount table; fds: our own open descriptors; temp files: entries of /tmp, /var/tmp,
  /dev/shm and the user's XDG_RUNTIME_DIR owned by the container user (the test fixtures' own directories
  excepted); cgroups: directories named pirun-* under the cgroup2 mount.
"""
import ctypes
import os
import time
from contextlib import contextmanager

from conftest import alive, container_user, descendants, mount_table

PR_SET_CHILD_SUBREAPER = 36
FIXTURE_PREFIXES = ("pirun-test-", "pirun-probe-", "pirun-hostile-", "pirun-stress-", "pytest-of-")


@contextmanager
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        reap_all()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap_all(keep=()):
    """Collect the exit status of our children that have ended (orphans re-parented to us included), but not
    of `keep` (Popen objects wait for those themselves)."""
    me = os.getpid()
    for pid in descendants(me):
        if pid in keep or _ppid(pid) != me:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def living_descendants(keep=()):
    reap_all(keep)
    return [p for p in descendants(os.getpid()) if alive(p)]


def wait_no_descendants(timeout):
    """Wait until we have no living descendant; return those still alive after timeout (with their names)."""
    deadline = time.monotonic() + timeout
    while True:
        left = living_descendants()
        if not left or time.monotonic() > deadline:
            return [(p, comm(p)) for p in left]
        time.sleep(0.005)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def own_fds():
    return sorted(os.listdir("/proc/self/fd"))


def temp_entries():
    _n, uid, _g, _h = container_user()
    out = set()
    for d in ("/tmp", "/var/tmp", "/dev/shm", f"/run/user/{uid}"):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(FIXTURE_PREFIXES):
                continue
            try:
                if os.lstat(f"{d}/{name}").st_uid == uid:
                    out.add(f"{d}/{name}")
            except OSError:
                pass
    return out


def cgroup_leaves():
    out = set()
    for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(f"{base}/cgroup.controllers"):
            for dirpath, dirnames, _ in os.walk(base):
                for d in dirnames:
                    if d.startswith("pirun-"):
                        out.add(f"{dirpath}/{d}")
            break
    return out


class Snapshot:
    def __init__(self):
        self.mounts = mount_table()
        self.fds = own_fds()
        self.tmp = temp_entries()
        self.cgroups = cgroup_leaves()

    def assert_same(self, what=""):
        left = wait_no_descendants(2.0)
        assert left == [], f"{what}: processes left behind: {left}"
        assert mount_table() == self.mounts, f"{what}: the host's mount table changed"
        assert own_fds() == self.fds, f"{what}: our open fds changed: {self.fds} -> {own_fds()}"
        assert temp_entries() - self.tmp == set(), f"{what}: temp files left: {temp_entries() - self.tmp}"
        assert cgroup_leaves() - self.cgroups == set(), f"{what}: cgroups left: {cgroup_leaves() - self.cgroups}"
