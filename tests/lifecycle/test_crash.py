"""kill -9 of the monitor and of pirun commands at random points: no stale "running", nothing leaked, and
`rm` cleans up. The fixture checks at the end: no process (we are the subreaper), no record, name or log, no
mount, temp file or cgroup."""
import os
import random
import signal
import time

from conftest import ROOTFS, alive
from lc_helpers import one_line_error, pirun, reap_all  # noqa: F401  (fixture)


def _monitor_pid(pirun, ref):
    return pirun.inspect(ref)["State"]["ConmonPid"]


def _assert_truthful(pirun):
    """Every record that says running has a live PID 1 and monitor; no other says running."""
    for e in pirun.ps():
        data = pirun.inspect(e["Id"])
        st = data["State"]
        if st["Status"] == "running":
            assert alive(st["Pid"]) and alive(st["ConmonPid"]), data
        else:
            assert st["Pid"] == 0 and st["ConmonPid"] == 0, data


def test_kill_9_of_the_monitor(pirun):
    cid = pirun.detach("sleep", "300", name="m")
    st = pirun.inspect("m")["State"]
    pid, mon = st["Pid"], st["ConmonPid"]
    os.kill(mon, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the container outlived its monitor"
        time.sleep(0.01)
    reap_all()
    [e] = pirun.ps()
    assert e["State"] == "exited" and e["ExitCode"] == 137 and e["Status"].startswith("Exited (137)")
    assert "Up" not in pirun("ps", "-a").stdout
    assert pirun("ps").stdout.splitlines()[1:] == []
    assert "monitor was killed" in pirun.inspect("m")["State"]["Error"]
    assert pirun("stop", "m").returncode == 0                   # stopping it is fine, as for any exited one
    one_line_error(pirun("exec", "m", "true"))
    assert pirun("rm", "m").returncode == 0
    assert pirun.leftovers() == [] and not (pirun.root / "logs" / cid).exists()


def test_kill_9_of_pirun_run_d_at_random_points(pirun):
    rng = random.Random(11)
    for i in range(12):
        proc = pirun.popen("run", "-d", "--name", f"r{i}", "--net", "none", "--rootfs", ROOTFS, "sleep", "300")
        time.sleep(rng.uniform(0, 0.12))
        proc.kill()
        proc.communicate()
    time.sleep(0.3)
    reap_all()
    _assert_truthful(pirun)
    assert pirun("rm", "-f", "-a").returncode == 0
    assert pirun.ps() == []


def test_kill_9_of_the_monitor_during_start_up(pirun):
    """The monitor killed before it says "started": pirun run -d reports it in one line, and no record
    survives that claims anything."""
    rng = random.Random(7)
    for i in range(10):
        proc = pirun.popen("run", "-d", "--name", f"s{i}", "--net", "none", "--rootfs", ROOTFS, "sleep", "300")
        deadline = time.monotonic() + rng.uniform(0.01, 0.15)
        killed = False
        while time.monotonic() < deadline and not killed:
            for p in _monitors():
                os.kill(p, signal.SIGKILL)
                killed = True
        out, err = proc.communicate(timeout=30)
        reap_all()
        if proc.returncode != 0:
            assert proc.returncode == 125 and len(err.strip().splitlines()) == 1, err
            assert "Traceback" not in err
    time.sleep(0.3)
    reap_all()
    _assert_truthful(pirun)
    assert pirun("rm", "-f", "-a").returncode == 0


def test_kill_9_of_stop_rm_and_exec_at_random_points(pirun):
    rng = random.Random(5)
    for i in range(6):
        pirun.detach("sh", "-c", "trap 'sleep 0.2; exit 0' TERM; while :; do sleep 0.05; done", name=f"c{i}")
    for i in range(6):
        cmd = ("stop", "rm -f", "exec")[i % 3].split()
        extra = ["true"] if cmd == ["exec"] else []
        proc = pirun.popen(*cmd, f"c{i}", *extra)
        time.sleep(rng.uniform(0, 0.15))
        proc.kill()
        proc.communicate()
    time.sleep(0.5)
    reap_all()
    _assert_truthful(pirun)
    assert pirun("rm", "-f", "-a").returncode == 0
    assert pirun.ps() == []


def _monitors():
    out = []
    me = os.getpid()
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/comm") as f:
                    if f.read().strip() != "pirun-monitor":
                        continue
                with open(f"/proc/{e}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == me or _descends(ppid, me):
                out.append(int(e))
    return out


def _descends(pid, ancestor):
    for _ in range(10):
        if pid in (0, 1):
            return False
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False
