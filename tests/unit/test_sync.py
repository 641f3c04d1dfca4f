"""Errors across the sync channel and how run.py prints them: class, exit code, message, fix and errno survive
the trip from the container side to the launcher; everything ends as one line and its exit code."""
import errno
import os

import pytest

from runtime import errors, run, sync
from runtime.cgroup import dbus


@pytest.fixture
def pair():
    parent, child = sync.Channel.pair()
    yield parent, child
    parent.close()
    child.close()


def round_trip(pair, exc, step=None):
    """What the launcher raises for `exc` sent by the container side, and the code the sender exits with."""
    parent, child = pair
    code = child.send_error(exc, step)
    with pytest.raises(errors.PirunError) as got:
        parent.expect(sync.SETUP, "set up the container")
    return got.value, code


def test_setup_error_keeps_message_fix_and_errno(pair):
    sent = errors.os_error("mount proc on", "/proc", errno.EPERM, fix="run the pirun_prereqs role")
    got, code = round_trip(pair, sent)
    assert type(got) is errors.SetupError and code == got.exit_code == 125
    assert got.line() == "mount proc on /proc: Operation not permitted; fix: run the pirun_prereqs role"
    assert got.errno == errno.EPERM


def test_exec_error_keeps_its_exit_code(pair):
    got, code = round_trip(pair, errors.ExecError("x: cannot execute: Permission denied", exit_code=126))
    assert type(got) is errors.ExecError and got.exit_code == code == 126 and got.errno is None


@pytest.mark.parametrize("make, step, line, err", [
    (lambda: os.mkdir("/proc/self"), "mount dev", "mount dev /proc/self: File exists", errno.EEXIST),
    (lambda: os.open("/nonexistent/x", os.O_RDONLY), "write etc",
     "write etc /nonexistent/x: No such file or directory", errno.ENOENT),
    # symlink(src, dst): the object is the link that could not be made
    (lambda: os.symlink("pts/ptmx", "/proc/self"), "mount dev", "mount dev /proc/self: File exists",
     errno.EEXIST),
    (lambda: os.close(-1), "pivot root", "pivot root: Bad file descriptor", errno.EBADF),
])
def test_raw_oserror_arrives_with_step_object_and_errno(pair, make, step, line, err):
    with pytest.raises(OSError) as raised:
        make()
    got, code = round_trip(pair, raised.value, step)
    assert type(got) is errors.SetupError and code == 125
    assert got.line() == line and got.errno == err


def test_other_exception_is_an_internal_error(pair):
    got, code = round_trip(pair, ValueError("bad"))
    assert got.line() == "internal error: ValueError('bad')" and code == 125 and got.errno is None


def test_short_error_message_still_decodes():
    got = sync.error_from_fields(["CgroupError", "125", "cgroup: full"])
    assert type(got) is errors.CgroupError and got.line() == "cgroup: full" and got.errno is None
    assert type(sync.error_from_fields(["os", "1", "x"])) is errors.SetupError   # never a non-pirun class


def test_dbus_error_is_a_cgroup_error_printed_as_one_line(monkeypatch, capfd):
    """A D-Bus failure that reaches run.py's main is one line with the fix, exit 125 (no traceback)."""
    assert issubclass(dbus.DBusError, errors.CgroupError)

    def launch(spec, hostcfg, warn):
        raise dbus.DBusError("the bus closed the connection")
    monkeypatch.setattr("runtime.launcher.launch", launch)
    assert run.main(["--allow-root", "--net", "none", "--rootfs", "/", "true"]) == 125
    err = capfd.readouterr().err
    assert err == f"run.py: error: the bus closed the connection; fix: {dbus.FIX}\n"
