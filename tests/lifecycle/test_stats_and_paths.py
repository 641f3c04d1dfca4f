"""stats where the container has no cgroup, and what run.py's path does not pay for."""
import subprocess

from conftest import ROOTFS, RUN, user_env, user_kwargs
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)


def test_stats_without_a_cgroup_says_why(pirun):
    """This CI machine has a hybrid cgroup hierarchy: no container gets a cgroup of its own (the VM tests
    cover stats with one)."""
    pirun.detach("sleep", "300", name="st")
    if pirun.inspect("st")["HostConfig"]["CgroupPath"]:
        r = pirun("stats", "--no-stream", "st")
        assert r.returncode == 0 and "st" in r.stdout and "MEM USAGE / LIMIT" in r.stdout
    else:
        line = one_line_error(pirun("stats", "--no-stream", "st"))
        assert "no cgroup of its own" in line and "fix:" in line
    pirun("stop", "st")
    one_line_error(pirun("stats", "--no-stream", "st"))
    one_line_error(pirun("stats", "--no-stream", "nosuch"))


def test_run_py_imports_no_lifecycle_code():
    r = subprocess.run(["/usr/bin/python3", "-I", "-X", "importtime", str(RUN), "--net", "none", "--rootfs",
                        str(ROOTFS), "/bin/true"], capture_output=True, text=True, env=user_env(), cwd="/",
                       **user_kwargs())
    assert r.returncode == 0, r.stderr
    modules = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "runtime.launcher" in modules
    bad = sorted(m for m in modules if m.startswith(("runtime.lifecycle", "runtime.cmd", "runtime.image"))
                 or m in ("json", "select", "subprocess", "socket", "signal", "re", "dataclasses", "typing"))
    assert bad == [], bad
