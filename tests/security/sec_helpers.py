"""Helpers of the security suites: the static probe compiled from probe.c (the busybox rootfs has no Python),
a throw-away copy of the rootfs owned by the test user, and a host canary file."""
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import container_user, missing, run

HERE = Path(__file__).resolve().parent
PROBE_C = HERE / "probe.c"
_built = {}


def probe_dir():
    """A directory (readable by the test user) holding the static `probe`, built once per session."""
    src = PROBE_C.read_bytes()
    key = hashlib.sha256(src).hexdigest()[:12]
    if key in _built and (_built[key] / "probe").exists():
        return _built[key]
    if shutil.which("gcc") is None:
        missing("gcc (the security tests compile a static probe)", "apt-get install gcc libc6-dev")
    d = Path(tempfile.mkdtemp(prefix="pirun-probe-", dir="/tmp"))
    os.chmod(d, 0o755)
    r = subprocess.run(["gcc", "-static", "-O1", "-Wall", "-o", str(d / "probe"), str(PROBE_C)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        missing(f"a static C toolchain (gcc -static failed: {r.stderr.strip()[:300]})",
                "apt-get install gcc libc6-dev")
    os.chmod(d / "probe", 0o755)
    _built[key] = d
    return d


def cleanup_probes():
    for d in _built.values():
        shutil.rmtree(d, ignore_errors=True)
    _built.clear()


@pytest.fixture(scope="session")
def probe():
    d = probe_dir()
    yield d
    cleanup_probes()


def run_probe(probe, args, opts=(), **kw):
    """run.py [opts] -v PROBE:/opt:ro /opt/probe args..."""
    return run(list(opts) + ["-v", f"{probe}:/opt:ro", "/opt/probe"] + list(args), **kw)


def parse_sys(stdout):
    out = {}
    for line in stdout.splitlines():
        name, _, result = line.partition(" ")
        out[name] = result
    return out


def as_user(argv, **kw):
    """Run a host command as the test user."""
    _name, uid, gid, _home = container_user()
    if os.getuid() == 0:
        kw.update(user=uid, group=gid, extra_groups=[])
    return subprocess.run(argv, capture_output=True, text=True, **kw)


@pytest.fixture
def user_rootfs(rootfs):
    """A private copy of the test rootfs, owned by the test user, that a test may make hostile."""
    _name, uid, gid, _home = container_user()
    parent = Path(tempfile.mkdtemp(prefix="pirun-hostile-", dir="/tmp"))
    os.chown(parent, uid, gid)
    os.chmod(parent, 0o755)
    dest = parent / "rootfs"
    r = as_user(["cp", "-a", str(rootfs), str(dest)])
    if r.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        missing(f"a copy of the rootfs as the test user ({r.stderr.strip()})")
    yield dest
    shutil.rmtree(parent, ignore_errors=True)


class Canary:
    """A host file that must be neither read nor written by a container: content, mtime and atime checked."""

    def __init__(self, directory, name="canary", content="host canary: must stay unchanged\n"):
        self.path = Path(directory) / name
        self.content = content
        self.path.write_text(content)
        _name, uid, gid, _home = container_user()
        os.chown(self.path, uid, gid)        # writable by the test user: a write through a link would land
        os.chmod(self.path, 0o644)
        past = 1_000_000_000                  # 2001: atime changes on a read are then visible even with relatime
        os.utime(self.path, (past, past))
        st = os.stat(self.path)
        self.stamp = (st.st_mtime_ns, st.st_atime_ns, st.st_ino, st.st_size)

    def assert_untouched(self):
        st = os.stat(self.path)                  # before our own read below changes the atime
        now = (st.st_mtime_ns, st.st_atime_ns, st.st_ino, st.st_size)
        assert now == self.stamp, f"host file {self.path} was read or written: {self.stamp} -> {now}"
        assert self.path.read_text() == self.content, f"host file {self.path} was written"


def one_line_error(r):
    """A clean runtime failure: 125, exactly one line on stderr, no traceback."""
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py: error: "), r.stderr
    return lines[0]

