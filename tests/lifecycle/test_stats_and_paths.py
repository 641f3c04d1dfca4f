"""stats where the container has no cgroup, and what run.py's path does not pay for."""
import subprocess

from conftest import ROOTFS, RUN, user_env, user_kwargs
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)


def test_stats_without_a_cgroup_says_why(pirun):
    """This CI machine has a hybrid cgroup hierarchy: no container gets a cgroup of its own. A real leaf is
    only on hosts with delegated cgroup v2; the leaf test below reads files laid out as the kernel's."""
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


def _record_leaf(pirun, ref, leaf):
    """Point the container's record at `leaf` as its monitor does when the container has a cgroup."""
    import marshal
    cid = pirun.inspect(ref)["Id"]
    path = pirun.runroot / "containers" / cid / "state"
    data = marshal.loads(path.read_bytes())
    data["cgroup"] = str(leaf)
    path.write_bytes(marshal.dumps(data))


def test_stats_and_exec_use_the_recorded_cgroup_leaf(pirun, shared_tmp):
    """Files laid out as a cgroup v2 leaf's (no delegated cgroup here): stats reads them, exec writes its
    process into the leaf's cgroup.procs before it enters the namespaces."""
    import os
    from conftest import container_user
    pirun.detach("sleep", "300", name="cg")
    leaf = shared_tmp / "leaf"
    leaf.mkdir()
    files = {"memory.current": "10485760\n", "memory.max": "41943040\n", "pids.current": "3\n",
             "cpu.stat": "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n", "cgroup.procs": ""}
    _n, uid, gid, _h = container_user()
    for name, text in files.items():
        (leaf / name).write_text(text)
        os.chown(leaf / name, uid, gid)
    _record_leaf(pirun, "cg", leaf)
    r = pirun("stats", "--no-stream", "cg")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "CPU"]
    assert "cg" in row.split() and "10M / 40M" in row and "25.00%" in row and row.split()[-1] == "3", row
    assert pirun("exec", "cg", "true").returncode == 0
    written = (leaf / "cgroup.procs").read_text().split()
    assert len(written) == 1 and written[0].isdigit()                 # pirun exec's process X
    assert pirun.inspect("cg")["HostConfig"]["CgroupPath"] == str(leaf)
