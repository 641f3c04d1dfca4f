"""Shared helpers: the unprivileged test user, the test rootfs, running run.py as that user.

Containers are never started as root: when pytest runs as root (as in CI), every run.py is started as
$PIRUN_TEST_USER (default `pirun`, created with subuid/subgid ranges by scripts/setup). A missing prerequisite
fails the test with its name and the fix; nothing is skipped.
"""
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runtime" / "run.py"
TEST_USER = os.environ.get("PIRUN_TEST_USER", "pirun")
ROOTFS = Path(os.environ.get("PIRUN_TEST_ROOTFS", REPO / "rootfs_host"))
ROOTFS_ARM = Path(os.environ.get("PIRUN_TEST_ROOTFS_ARM", REPO / "rootfs_arm"))


def missing(what, fix="run scripts/setup as root"):
    pytest.fail(f"prerequisite missing: {what}; fix: {fix}", pytrace=False)


def container_user():
    """(name, uid, gid, home) of the user containers run as."""
    if os.getuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        return pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        missing(f"the unprivileged test user {TEST_USER!r}")
    return pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir


def user_env(extra=None):
    name, _uid, _gid, home = container_user()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": home, "USER": name,
           "LOGNAME": name, "LANG": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def user_kwargs():
    """subprocess arguments that run the child as the test user (when we are root)."""
    if os.getuid() != 0:
        return {}
    _name, uid, gid, _home = container_user()
    return {"user": uid, "group": gid, "extra_groups": []}


def check_rootfs(path, what):
    if not (path / "bin" / "busybox").exists():
        missing(f"{what} at {path}", "run scripts/setup as root (it builds rootfs_host and rootfs_arm)")
    return path


@pytest.fixture(scope="session")
def rootfs():
    return check_rootfs(ROOTFS, "the host-architecture test rootfs")


@pytest.fixture(scope="session")
def rootfs_arm():
    return check_rootfs(ROOTFS_ARM, "the arm64 rootfs")


def run_args(args, rootfs=None, net="none"):
    argv = [str(RUN)]
    if net is not None:
        argv += ["--net", net]
    argv += ["--rootfs", str(rootfs or ROOTFS)]
    return argv + [str(a) for a in args]


def run(args, rootfs=None, net="none", input=None, timeout=60, env=None, raw_argv=False, cwd="/"):
    """Run run.py as the test user; returns CompletedProcess with text stdout/stderr."""
    argv = [str(RUN)] + [str(a) for a in args] if raw_argv else run_args(args, rootfs, net)
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          env=user_env(env), cwd=cwd, **user_kwargs())


def start(args, rootfs=None, net="none", **kw):
    """Start run.py as the test user in the background (Popen)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(run_args(args, rootfs, net), env=user_env(), cwd="/", text=True,
                            **user_kwargs(), **kw)


def descendants(pid):
    """Host PIDs of every descendant of pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=1.0):
    """Wait until none of pids is alive; return those still alive after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def mount_table():
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:]) for line in f)


@pytest.fixture
def shared_tmp(tmp_path_factory):
    """A temporary directory the test user can reach and write (pytest's own tmp_path is root's, mode 700)."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="pirun-test-", dir="/tmp"))
    _name, uid, gid, _home = container_user()
    os.chown(d, uid, gid)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
