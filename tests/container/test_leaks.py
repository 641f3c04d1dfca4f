"""Nothing is left behind: no process of a container after it ends or after kill -9 of run.py, the host's
mount table unchanged, no temp files."""
import os
import signal
import time

from conftest import alive, descendants, mount_table, run, start, wait_gone


def _tmp_entries():
    out = set()
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            out |= {f"{d}/{n}" for n in os.listdir(d)}
        except OSError:
            pass
    return out


def test_twenty_runs_leave_nothing(rootfs):
    mounts, tmp = mount_table(), _tmp_entries()
    for i in range(20):
        r = run(["/bin/sh", "-c", f"echo run {i}"])
        assert r.returncode == 0 and r.stdout == f"run {i}\n", r.stderr
    assert mount_table() == mounts
    assert _tmp_entries() - tmp == set()


def test_kill_9_of_run_py_ends_the_container(rootfs):
    mounts = mount_table()
    proc = start(["/bin/sh", "-c", "sleep 100 & sleep 100"])
    deadline = time.monotonic() + 10
    while len([p for p in descendants(proc.pid) if alive(p)]) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    family = descendants(proc.pid)
    assert len(family) >= 3, "expected I, PID 1 (sleep) and a second sleep"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(family, timeout=1.0) == [], "container processes survived kill -9 of run.py"
    assert mount_table() == mounts


def test_setup_failure_leaves_nothing(rootfs):
    from stress.stress_helpers import living_descendants, subreaper
    mounts = mount_table()
    with subreaper():                    # whatever run.py leaves behind is re-parented to this test
        r = run(["-w", "/no/such", "true"])
        assert r.returncode == 125
        time.sleep(0.05)
        assert living_descendants() == []
    assert mount_table() == mounts


def test_callers_extra_fds_do_not_reach_the_command(rootfs):
    import subprocess
    from conftest import run_args, user_env, user_kwargs
    r = subprocess.run(["/bin/sh", "-c", 'exec 7</etc/passwd; exec "$@"', "sh"] + run_args(["ls", "/proc/self/fd"]),
                       capture_output=True, text=True, env=user_env(), cwd="/", **user_kwargs())
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) <= {"0", "1", "2", "3"}, r.stdout     # 3: ls's own directory fd
