"""Signals sent to run.py reach the container's PID 1; a signal PID 1 does not handle ends it as it would end
any other process (exit 128+N)."""
import os
import signal
import time

import pytest

from conftest import descendants, start, wait_for


def _wait_running(proc, name):
    def found():
        for pid in descendants(proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0].endswith(name.encode()):
                        return pid
            except OSError:
                pass
        return None
    return wait_for(found, what=f"{name} to run in the container")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_fatal_signal_ends_sleep_within_a_second(rootfs, sig):
    proc = start(["sleep", "100"])
    _wait_running(proc, "sleep")
    t0 = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert code == 128 + sig, proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
                                 signal.SIGINT, signal.SIGWINCH])
def test_signal_reaches_a_handler_in_pid_1(rootfs, sig):
    name = signal.Signals(sig).name[3:]
    script = f"trap 'echo got {name}; exit 7' {name}; echo ready; while :; do sleep 0.05; done"
    proc = start(["sh", "-c", script])
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 7, err
    assert out.strip() == f"got {name}"


def test_signal_with_init_goes_to_the_command(rootfs):
    proc = start(["--init", "sh", "-c", "trap 'echo got USR1; exit 9' USR1; echo ready; while :; do sleep 0.05; done"])
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=5)
    assert proc.returncode == 9
    assert "got USR1" in out


def test_init_reaps_orphans(rootfs):
    from conftest import run
    # Orphaned grandchildren end up as children of PID 1: with --init they are reaped, not left as zombies.
    r = run(["--init", "sh", "-c", "(sleep 0.2 &) ; sleep 0.5; ps -o stat,comm | grep -c '^Z' || true"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
