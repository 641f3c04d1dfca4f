"""Helpers of the lifecycle tests: `pirun` as the unprivileged test user, with a store and a state directory
of the test's own, and "nothing left behind" checked when the test ends.

The test process is a child subreaper while a test runs, so detached monitors (orphaned when `pirun run -d`
returns) are re-parented to it: "nothing left" is "no living descendant", whatever else runs on the machine.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from conftest import REPO, ROOTFS, container_user, user_env, user_kwargs  # noqa: E402
from stress_helpers import Snapshot, reap_all, subreaper  # noqa: E402

PIRUN = REPO / "runtime" / "pirun"


class Pirun:
    """`pirun` with --root and --runroot in a directory of this test."""

    def __init__(self, base):
        self.base = base
        self.root = base / "root"
        self.runroot = base / "run"

    def argv(self, *args):
        return [str(PIRUN), "--root", str(self.root), "--runroot", str(self.runroot)] + [str(a) for a in args]

    def __call__(self, *args, input=None, timeout=60, env=None, check=False):
        r = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=timeout,
                           env=user_env(env), cwd="/", **user_kwargs())
        if check and r.returncode != 0:
            raise AssertionError(f"pirun {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def popen(self, *args, env=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(*args), env=user_env(env), cwd="/", text=True, **user_kwargs(), **kw)

    def detach(self, *args, name=None, net="none", extra=(), env=None):
        """`pirun run -d` of a --rootfs container; returns its ID."""
        opts = ["run", "-d", "--net", net, "--rootfs", ROOTFS, *extra]
        if name:
            opts += ["--name", name]
        r = self(*opts, *args, env=env)
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid), r.stdout
        return cid

    def ps(self, *args):
        r = self("ps", "-a", "--format", "json", *args, check=True)
        return json.loads(r.stdout)

    def inspect(self, ref):
        r = self("inspect", ref, check=True)
        return json.loads(r.stdout)[0]

    def status(self, ref):
        return self.inspect(ref)["State"]["Status"]

    def wait_status(self, ref, status, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            got = self.status(ref)
            if got == status:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{ref}: status {got}, expected {status}")
            time.sleep(0.05)

    def leftovers(self):
        """Files under --runroot and --root/logs that are not a container's (a name index lock is fine)."""
        out = []
        for d in (self.runroot / "containers", self.runroot / "names", self.root / "logs"):
            if d.exists():
                out += [str(p) for p in d.iterdir() if p.name != ".lock"]
        return out


def one_line_error(r, code=125):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("pirun: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture
def pirun():
    """A Pirun with its own directories; at the end every container is removed and nothing may be left:
    no process (the test is a subreaper), no record, name or log, no mount, fd, temp file or cgroup."""
    container_user()
    base = Path(tempfile.mkdtemp(prefix="pirun-test-lc-", dir="/tmp"))
    _n, uid, gid, _h = container_user()
    os.chown(base, uid, gid)
    os.chmod(base, 0o755)
    with subreaper():
        snap = Snapshot()
        p = Pirun(base)
        try:
            yield p
        finally:
            try:
                # orphans re-parented to us (the test is their subreaper) must be reaped: a zombie of a PID
                # namespace keeps its PID 1 from finishing its exit
                reap_all()
                p("rm", "-f", "-a", timeout=60)
                left_files = p.leftovers()
                snap.assert_same("after the test's containers were removed")
                assert left_files == [], f"state left behind: {left_files}"
            finally:
                shutil.rmtree(base, ignore_errors=True)
