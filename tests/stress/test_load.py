"""Load: 50 containers at once, each with its own exit status; 200 in sequence (500 in bench/load.py); nothing
left behind (processes, mounts, our fds, temp files, cgroups)."""
import os
import subprocess
import time

import pytest

from conftest import start, run, user_env, user_kwargs, wait_for
from net_helpers import require_net_prereqs
from stress_helpers import Snapshot, living_descendants, subreaper

N_PARALLEL = 50
N_SEQUENCE = 200


NETS = ["none", "slirp4netns"]         # slirp4netns: the default network


def need(net):
    """Fail naming slirp4netns or /dev/net/tun (and the fix) when the test user cannot use them."""
    if net == "slirp4netns":
        require_net_prereqs(user_kwargs(), user_env(), tools=("slirp4netns",))


@pytest.mark.parametrize("net", NETS)
def test_fifty_at_once_each_with_its_own_status(rootfs, net, shared_tmp):
    """Each container says it started (a file in a shared volume), then waits for the go file: all fifty are
    running at the same moment; then each exits with its own status."""
    need(net)
    with subreaper():
        snap = Snapshot()
        procs = []
        try:
            for i in range(N_PARALLEL):
                # bounded wait: the containers end by themselves even if this test dies
                script = (f"touch /mnt/started-{i}; n=0; while [ ! -e /mnt/go ] && [ $n -lt 600 ]; do sleep 0.1; "
                          f"n=$((n+1)); done; echo c{i}; exit {i}")
                procs.append(start(["-v", f"{shared_tmp}:/mnt", "/bin/sh", "-c", script], net=net))
            keep = {p.pid for p in procs}

            def started():
                living_descendants(keep)                    # reap orphans as they come, if any
                bad = [p for p in procs if p.poll() is not None]
                assert not bad, [(p.returncode, p.stderr.read()) for p in bad]
                return len([n for n in os.listdir(shared_tmp) if n.startswith("started-")]) == N_PARALLEL

            wait_for(started, timeout=90, what=f"{N_PARALLEL} containers running together")
            (shared_tmp / "go").touch()
            for i, p in enumerate(procs):
                out, err = p.communicate(timeout=120)
                assert p.returncode == i, (i, p.returncode, err)
                assert out == f"c{i}\n", (i, out, err)
                assert err == "", (i, err)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()                                # run.py's death takes its container with it
                p.communicate()
        snap.assert_same(f"{N_PARALLEL} parallel containers")


def test_two_hundred_in_sequence_leave_nothing(rootfs):
    with subreaper():
        snap = Snapshot()
        t0 = time.monotonic()
        for i in range(N_SEQUENCE):
            r = run(["/bin/sh", "-c", f"exit {i % 7}"])
            assert r.returncode == i % 7 and r.stderr == "", (i, r.returncode, r.stderr)
        per = (time.monotonic() - t0) / N_SEQUENCE
        snap.assert_same(f"{N_SEQUENCE} containers in sequence")
    print(f"{N_SEQUENCE} containers in sequence: {per * 1000:.1f} ms each")
    assert per < 1.0, f"{per:.2f} s per container"


def test_long_lived_parent_keeps_its_fds_across_popen_runs(rootfs):
    """The fds of a long-lived parent that starts containers (our pytest process) do not grow."""
    before = sorted(os.listdir("/proc/self/fd"))
    for i in range(30):
        p = start(["/bin/sh", "-c", "echo x"], stdin=subprocess.DEVNULL)
        p.communicate(timeout=30)
        assert p.returncode == 0
    assert sorted(os.listdir("/proc/self/fd")) == before
