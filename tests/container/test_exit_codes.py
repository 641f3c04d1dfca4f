"""Exit status as podman documents it: the command's own, 125/126/127, 128+N; one line on stderr."""
import os
import signal

import pytest

from conftest import descendants, run, start, wait_for


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


@pytest.mark.parametrize("cmd, code", [
    (["true"], 0),
    (["false"], 1),
    (["sh", "-c", "exit 32"], 32),
    (["sh", "-c", "exit 124"], 124),
])
def test_command_status(rootfs, cmd, code):
    r = run(cmd)
    assert r.returncode == code, r.stderr
    assert r.stderr == ""


def test_pid1_killed_by_a_fault_is_128_plus_n(rootfs):
    """The command is PID 1 and dies of SIGSEGV (a shell function recursing until the stack overflows): no
    shell is left to compute a status, run.py turns the signal into 139. `exit 3` is never reached."""
    r = run(["sh", "-c", "f() { f; }; f; exit 3"])
    assert r.returncode == 139, (r.returncode, r.stderr)
    assert r.stderr == ""


def test_pid1_killed_from_the_host_is_128_plus_n(rootfs):
    """SIGKILL sent from the host to the command (PID 1 inside, `sleep` itself, no shell): 137."""
    p = start(["sleep", "100"])
    try:
        sleeper = wait_for(lambda: [q for q in descendants(p.pid) if _comm(q) == "sleep"], timeout=10,
                           what="the container's sleep")
        os.kill(sleeper[0], signal.SIGKILL)
        assert p.wait(timeout=10) == 137, p.stderr.read()
        assert p.stderr.read() == ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("sig, code", [("TERM", 143), ("SEGV", 139), ("KILL", 137)])
def test_command_under_init_killed_by_signal(rootfs, sig, code):
    """With --init the reaper is PID 1 and the command an ordinary process: it can kill itself."""
    r = run(["--init", "sh", "-c", f"kill -{sig} $$; exit 3"])
    assert r.returncode == code, r.stderr


@pytest.mark.parametrize("cmd, code, text", [
    (["/no/such"], 127, "/no/such: command not found"),
    (["nosuchcommand"], 127, "nosuchcommand: command not found"),
    (["/etc"], 126, "/etc: cannot execute"),
    (["/etc/passwd"], 126, "/etc/passwd: cannot execute"),
])
def test_cannot_run(rootfs, cmd, code, text):
    r = run(cmd)
    assert r.returncode == code
    assert r.stderr.startswith("run.py: error: ")
    assert text in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_missing_command_under_init(rootfs):
    r = run(["--init", "/no/such"])
    assert r.returncode == 127
    assert "/no/such: command not found" in r.stderr
