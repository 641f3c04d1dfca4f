"""Resource limits on a host WITHOUT a usable cgroup v2 memory controller (this build machine: hybrid cgroups,
memory bound to v1, PID 1 not systemd): a requested limit is an error (125, one line naming the controller and
the fix) and the container does not run; without limits the container runs and nothing is printed.
Real limits (OOM, fork bomb, CPU quota, cleanup) are tested in the VM: molecule/shared/verify_cgroup.yml."""
import os

import pytest

from conftest import missing, run

MARK = "CONTAINER-RAN"


@pytest.fixture(scope="module")
def no_v2_memory():
    """The prerequisite of these tests: no memory controller in the cgroup v2 root (hybrid/legacy host)."""
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            v2_root = f.read().split()
    except OSError:
        v2_root = []
    if "memory" in v2_root:
        missing("a host whose memory controller is not usable in cgroup v2 (like this build machine: hybrid "
                "cgroups); on cgroup v2 hosts the limits are covered by the VM tests",
                "run this file on the hybrid-cgroup build machine; molecule/shared/verify_cgroup.yml in the VM")


@pytest.mark.parametrize("opts, controller", [
    (["--memory", "16M"], "memory"),
    (["--memory", "1.5G", "--memory-swap", "1G"], "memory"),
    (["--pids", "64"], "pids"),
    (["--cpus", "0.5"], "cpu"),
    (["--cpu-weight", "50"], "cpu"),
])
def test_limit_without_controller_is_an_error_and_nothing_runs(rootfs, no_v2_memory, opts, controller):
    r = run(opts + ["sh", "-c", f"echo {MARK}"])
    assert r.returncode == 125, r.stderr
    assert MARK not in r.stdout and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"run.py: error: cgroup {controller} controller")
    assert "; fix: " in r.stderr and "pirun_cgroup" in r.stderr


def test_memory_16m_message(rootfs, no_v2_memory):
    r = run(["--memory", "16M", "true"])
    assert r.returncode == 125
    assert r.stderr == ("run.py: error: cgroup memory controller: bound to cgroup v1 on this host (hybrid "
                        "hierarchy: memory not available in cgroup v2); pirun needs the unified cgroup v2 "
                        "hierarchy; fix: run the pirun_cgroup Ansible role and reboot (it switches the host to "
                        "the unified cgroup v2 hierarchy: systemd.unified_cgroup_hierarchy=1 on systemd hosts, "
                        "cgroup_no_v1=all otherwise)\n")


def test_stats_without_cgroup_is_an_error(rootfs, no_v2_memory):
    r = run(["--stats", "sh", "-c", f"echo {MARK}"])
    assert r.returncode == 125 and r.stdout == ""
    assert r.stderr.startswith("run.py: error: cgroup for --stats: no delegated cgroup")


@pytest.mark.parametrize("size", ["16Q", "-1M", "1e6", "", "1.5.5G"])
def test_bad_size_is_125_before_anything(rootfs, size):
    r = run(["--memory", size, "sh", "-c", f"echo {MARK}"])
    assert r.returncode == 125 and r.stdout == ""
    assert r.stderr.startswith(f"run.py: error: --memory: invalid size {size!r}")
    assert r.stderr.count("\n") == 1


def test_no_limit_runs_silently(rootfs, no_v2_memory):
    r = run(["sh", "-c", f"echo {MARK}"])
    assert r.returncode == 0 and r.stdout == f"{MARK}\n" and r.stderr == ""


def test_error_leaves_no_process(rootfs, no_v2_memory):
    """Nothing of the refused container starts (other tests may run containers as the same user meanwhile:
    look for this container's own, unique command line)."""
    marker = "31.4159"

    def mine():
        found = []
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    with open(f"/proc/{e}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            found.append(int(e))
                except OSError:
                    pass
        return found

    r = run(["--memory", "16M", "sleep", marker])
    assert r.returncode == 125
    assert mine() == []
