"""A container-side setup step that fails on a system call: one line naming the step, the object and the
reason, exit 125, the command never started, nothing written. A volume over /dev is the user's directory:
the generated /etc files never pass through it."""
import os

import pytest

from conftest import container_user, run


def test_step_failing_with_eacces_names_step_and_object(rootfs):
    # /root is root's (mode 700): the container's user cannot look up a volume target through it
    assert os.stat("/root").st_mode & 0o077 == 0, "this test needs the host's /root closed to other users"
    r = run(["-v", "/root:/mnt", "-v", "/tmp:/mnt/sub", "/bin/sh", "-c", "echo started"])
    assert r.returncode == 125
    assert r.stdout == ""
    assert r.stderr == "run.py: error: volume /tmp:/mnt/sub /mnt/sub: Permission denied in the rootfs\n"


@pytest.mark.parametrize("mode", ["", ":ro"])
def test_volume_over_dev_is_never_written(rootfs, shared_tmp, mode):
    # the generated /etc files are written into the container's own /dev tmpfs, which the volume covers:
    # the host directory is neither written nor changed (its mtime would show a file created and unlinked)
    dev = shared_tmp / "dev"
    dev.mkdir()
    (dev / "null").touch()                      # what the masked /proc paths are bound from, as /dev/null
    _n, uid, gid, _h = container_user()
    os.chown(dev, uid, gid)
    os.chown(dev / "null", uid, gid)
    before = os.stat(dev).st_mtime_ns
    r = run(["-v", f"{dev}:/dev{mode}", "/bin/sh", "-c", "cat /etc/hostname; ls -a /dev"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] and lines[1:] == [".", "..", "null"]
    assert sorted(os.listdir(dev)) == ["null"]
    assert os.stat(dev).st_mtime_ns == before, "a file was created in the host's directory and removed"
