"""Exit status as podman documents it: the command's own, 125/126/127, 128+N; one line on stderr."""
import pytest

from conftest import run


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


def test_killed_by_signal_is_128_plus_n(rootfs):
    r = run(["sh", "-c", "sh -c 'kill -TERM $$'; sleep 5 & kill -KILL $!; wait $!; exit $?"])
    assert r.returncode == 137
    r = run(["--init", "sh", "-c", "kill -TERM $$"])
    assert r.returncode == 143, r.stderr


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
