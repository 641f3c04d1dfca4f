"""The arm64 rootfs (the Pis' architecture) runs here under qemu-user registered in binfmt_misc (F flag)."""
import os

import pytest

from conftest import run


def test_uname_m_is_aarch64(rootfs_arm):
    if os.uname().machine != "aarch64":
        try:
            with open("/proc/sys/fs/binfmt_misc/qemu-aarch64") as f:
                flags = next(line.split()[1] for line in f if line.startswith("flags:"))
        except (OSError, StopIteration):
            pytest.fail("prerequisite missing: qemu-aarch64 in binfmt_misc; fix: run scripts/setup "
                        "(apt-get install qemu-user-static binfmt-support)", pytrace=False)
        assert "F" in flags, "qemu-aarch64 must be registered with the F flag to work after pivot_root"
    r = run(["uname", "-m"], rootfs=rootfs_arm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "aarch64"


def test_arm64_container_basics(rootfs_arm):
    r = run(["/bin/sh", "-c", "echo $$; hostname; id -u"], rootfs=rootfs_arm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "myhost", "0"]
