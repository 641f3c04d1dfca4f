"""Named and detached containers of an image: the lifecycle commands on the image's own writable layer.

A container of an image keeps its writable layer until `pirun rm`; `exec` runs as the image's User; `stop`
sends the image's StopSignal; `rmi` is refused while a container (running or exited) uses the image."""
import json
import os
import signal
import time

from conftest import descendants, wait_gone
from image_helpers import loaded, one_error_line, pirun, root, test_layout, image_dir, _user_dir  # noqa: F401

import pytest

RUN = ["run", "--pull=never", "--net", "none"]
LOOP = "trap 'echo stopped by INT; exit 7' INT; echo up; while :; do sleep 0.1; done"


@pytest.fixture
def runroot():
    d = _user_dir("pirun-run-")
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def layer_dirs(root):
    d = root / "containers"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def inspect(root, runroot, name):
    r = pirun(["inspect", name], root, runroot=runroot)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def test_named_container_of_an_image(loaded, runroot):
    r = pirun(RUN + ["-d", "--name", "web", "test:1", "sh", "-c", LOOP], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert layer_dirs(loaded) == [cid]

    # exec runs as the image's User unless -u says otherwise, and writes into this container's layer only
    r = pirun(["exec", "web", "sh", "-c", "id -u; echo mine > /tmp/f"], loaded, runroot=runroot)
    assert (r.returncode, r.stdout) == (0, "1000\n"), r.stderr
    r = pirun(["exec", "-u", "0", "web", "id", "-u"], loaded, runroot=runroot)
    assert r.stdout == "0\n", r.stderr
    r = pirun(RUN + ["test:1", "cat", "/tmp/f"], loaded)
    assert r.returncode == 1, "a second container of the image saw the first one's file"

    # the image is in use: rmi refused, naming the container
    assert "web" in one_error_line(pirun(["rmi", "test:1"], loaded, runroot=runroot))

    # stop sends the image's StopSignal (SIGINT): the trap runs, the container exits 7 (SIGTERM would be 143)
    r = pirun(["stop", "-t", "10", "web"], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr
    st = inspect(loaded, runroot, "web")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 7), st
    r = pirun(["logs", "web"], loaded, runroot=runroot)
    assert r.stdout == "up\nstopped by INT\n", r.stderr

    # exited, still there: its layer stays, rmi still refused; a restart of the name is refused
    assert layer_dirs(loaded) == [cid]
    assert "web" in one_error_line(pirun(["rmi", "test:1"], loaded, runroot=runroot))
    one_error_line(pirun(RUN + ["-d", "--name", "web", "test:1", "true"], loaded, runroot=runroot))
    assert layer_dirs(loaded) == [cid], "a refused run left a writable layer behind"

    # rm takes the record and the layer; then the image can go
    r = pirun(["rm", "web"], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr
    assert layer_dirs(loaded) == []
    r = pirun(["rmi", "test:1"], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr


def test_kill_9_of_the_monitor_keeps_the_layer_until_rm(loaded, runroot):
    r = pirun(RUN + ["-d", "--name", "svc", "test:1", "sleep", "100"], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    pid = inspect(loaded, runroot, "svc")["State"]["Pid"]
    monitor = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])     # I
    monitor = int(open(f"/proc/{monitor}/stat").read().rsplit(")", 1)[1].split()[1])  # the monitor
    family = [monitor] + descendants(monitor)
    os.kill(monitor, signal.SIGKILL)
    left = wait_gone(family, timeout=5.0)
    assert left == [], (family, monitor, [open(f"/proc/{p}/stat").read() for p in left])
    deadline = time.monotonic() + 5
    while inspect(loaded, runroot, "svc")["State"]["Status"] != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inspect(loaded, runroot, "svc")["State"]["Status"] == "exited"
    assert layer_dirs(loaded) == [cid]                    # a named container's layer is kept
    r = pirun(["images"], loaded, runroot=runroot)        # any store command: not debris, kept
    assert layer_dirs(loaded) == [cid]
    r = pirun(["rm", "svc"], loaded, runroot=runroot)
    assert r.returncode == 0, r.stderr
    assert layer_dirs(loaded) == []


def test_rm_run_removes_its_layer(loaded, runroot):
    r = pirun(RUN + ["--rm", "--name", "once", "test:1", "sh", "-c", "echo hi > /tmp/f; cat /tmp/f"], loaded,
              runroot=runroot)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert layer_dirs(loaded) == []
    r = pirun(["ps", "-a", "--format", "json"], loaded, runroot=runroot)
    assert json.loads(r.stdout or "[]") == [], r.stdout
