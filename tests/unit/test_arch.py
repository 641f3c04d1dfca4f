"""runtime/arch.py: architecture names, ELF identification, a rootfs's shell resolved inside the rootfs."""
import os

import pytest

from runtime import arch
from runtime.errors import SpecError


def fake_elf(path, machine, elf_class=2):
    path.write_bytes(b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 11 + machine.to_bytes(2, "little")
                     + b"\0" * 44)
    path.chmod(0o755)


def test_names():
    assert arch.normalize_arch("arm64") == "aarch64"
    assert arch.normalize_arch("amd64") == "x86_64"
    assert arch.normalize_arch("armhf") == arch.normalize_arch("armv8l") == "armv7l"
    assert arch.normalize_arch("i386") == "i686"
    assert arch.normalize_arch("host") == os.uname().machine
    with pytest.raises(SpecError) as e:
        arch.normalize_arch("sparc64")
    assert e.value.line() == "unknown architecture 'sparc64'; fix: use --arch aarch64, --arch x86_64 or --arch host"
    assert e.value.exit_code == 125


def test_elf_arch(tmp_path):
    fake_elf(tmp_path / "rv", 243)
    fake_elf(tmp_path / "arm32", 40, elf_class=1)
    fake_elf(tmp_path / "arm64_as_32", 183, elf_class=1)       # no such combination: unknown
    (tmp_path / "text").write_text("#!/bin/sh\n")
    assert arch.elf_arch(tmp_path / "rv") == "riscv64"
    assert arch.elf_arch(tmp_path / "arm32") == "armv7l"
    assert arch.elf_arch(tmp_path / "arm64_as_32") is None
    assert arch.elf_arch(tmp_path / "text") is None
    assert arch.elf_arch(tmp_path / "absent") is None


@pytest.fixture
def root(tmp_path):
    """A rootfs whose busybox is riscv64 (not this host's architecture), reached through various links."""
    r = tmp_path / "root"
    (r / "bin").mkdir(parents=True)
    fake_elf(r / "bin" / "busybox", 243)
    (r / "bin" / "sh").symlink_to("/bin/busybox")                    # absolute: restarts at the rootfs
    (r / "bin" / "up").symlink_to("../../../../../../bin/busybox")   # `..` stops at the rootfs
    (r / "bin" / "hostenv").symlink_to("/usr/bin/env")               # exists on the host, not inside
    (r / "bin" / "dangling").symlink_to("nowhere")
    (r / "bin" / "loop").symlink_to("loop")
    os.mkfifo(r / "bin" / "fifo")
    return r


def test_paths_resolve_inside_the_rootfs(root):
    assert os.path.exists("/usr/bin/env") and arch.elf_arch("/bin/sh") != "riscv64"
    assert arch.elf_arch_in_root(str(root), "/bin/sh") == "riscv64", "followed /bin/sh on the host"
    assert arch.elf_arch_in_root(str(root), "/bin/up") == "riscv64"
    assert arch.elf_arch_in_root(str(root), "/bin/hostenv") is None, "left the rootfs"
    assert arch.elf_arch_in_root(str(root), "/bin/dangling") is None
    assert arch.elf_arch_in_root(str(root), "/bin/loop") is None
    assert arch.elf_arch_in_root(str(root), "/bin/fifo") is None, "a fifo is never opened (it would block)"
    assert arch.elf_arch_in_root(str(root / "absent"), "/bin/sh") is None


def test_no_fd_left_open(root):
    before = set(os.listdir("/proc/self/fd"))
    for path in ("/bin/sh", "/bin/hostenv", "/bin/loop", "/bin/fifo"):
        arch.elf_arch_in_root(str(root), path)
    assert set(os.listdir("/proc/self/fd")) == before


def test_binfmt_entry_of_an_unregistered_architecture(monkeypatch, tmp_path):
    monkeypatch.setattr(arch, "BINFMT", str(tmp_path))
    assert arch.binfmt_entry("s390x") == (False, False, "", "")
    (tmp_path / "qemu-s390x").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/s390x-binfmt-P\n"
                                         "flags: POCF\noffset 0\n")
    (tmp_path / "status").write_text("enabled\n")
    assert arch.binfmt_entry("s390x") == (True, True, "POCF", "/usr/libexec/qemu-binfmt/s390x-binfmt-P")
    (tmp_path / "status").write_text("disabled\n")
    assert arch.binfmt_entry("s390x")[:2] == (True, False)
