"""A container-side setup step that fails on a system call: one line naming the step, the object and the
reason, exit 125, the command never started, nothing written."""
import os

from conftest import run


def test_step_failing_with_eacces_names_step_and_object(rootfs):
    # A volume over /dev hides the container's tmpfs /dev; /usr/share is root's, so the generated /etc files
    # cannot be created in it by the (unprivileged) container.
    r = run(["-v", "/usr/share:/dev", "/bin/sh", "-c", "echo started"])
    assert r.returncode == 125
    assert r.stdout == ""
    assert r.stderr == ("run.py: error: write the generated /etc/hostname to /dev/.pirun-hostname: "
                        "Permission denied\n")


def test_step_failing_with_erofs_names_step_and_object(rootfs, shared_tmp):
    r = run(["-v", f"{shared_tmp}:/dev:ro", "/bin/sh", "-c", "echo started"])
    assert r.returncode == 125
    assert r.stdout == ""
    assert r.stderr == ("run.py: error: write the generated /etc/hostname to /dev/.pirun-hostname: "
                        "Read-only file system\n")
    assert os.listdir(shared_tmp) == []
