"""The host's 32-bit ABI for the security suites: i386 on x86_64, arm (AArch32) on aarch64. Its busybox rootfs
(`rootfs_i386/` or `rootfs_armhf/`, built by scripts/setup from Debian's busybox-static) and probe.c compiled
for it, statically, so that the same calls go through the kernel's compat syscall table and through the
default seccomp filter's block for that ABI."""
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, missing
from runtime.rootfs import elf_arch
from sec_helpers import PROBE_C

# kernel (uname -m) -> (ABI, rootfs directory, uname -m of its binaries, compiler, packages for the compiler)
COMPAT = {
    "x86_64": ("i386", "rootfs_i386", "i686", ["gcc", "-m32"], "gcc-multilib libc6-dev-i386"),
    "aarch64": ("arm", "rootfs_armhf", "armv7l", ["arm-linux-gnueabihf-gcc"],
                "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"),
}
_built = {}


def compat():
    machine = os.uname().machine
    if machine not in COMPAT:
        missing(f"a 32-bit compat ABI on this {machine} kernel (the tests know x86_64 and aarch64)",
                "run the security suite on an x86_64 or aarch64 host")
    return COMPAT[machine]


@pytest.fixture(scope="session")
def compat_rootfs():
    abi, dirname, arch, _cc, _pkgs = compat()
    path = Path(os.environ.get("PIRUN_TEST_ROOTFS_COMPAT", REPO / dirname))
    busybox = path / "bin" / "busybox"
    if not busybox.exists():
        missing(f"the 32-bit ({abi}) test rootfs at {path}",
                f"run scripts/setup as root (it builds {dirname}), or: python3 -m runtime.rootfs --arch {arch} "
                f"--dest {dirname}")
    if elf_arch(busybox) != arch:
        missing(f"a 32-bit ({arch}) busybox in {path} (found {elf_arch(busybox) or 'no ELF'})",
                f"python3 -m runtime.rootfs --arch {arch} --dest {dirname} --force")
    return path


@pytest.fixture(scope="session")
def probe32():
    """A directory (readable by the test user) holding `probe` built for the compat ABI."""
    abi, _dirname, arch, cc, pkgs = compat()
    key = hashlib.sha256(PROBE_C.read_bytes()).hexdigest()[:12]
    if key not in _built:
        if shutil.which(cc[0]) is None:
            missing(f"{cc[0]} (the security tests compile a static {abi} probe)", f"apt-get install {pkgs}")
        d = Path(tempfile.mkdtemp(prefix="pirun-probe32-", dir="/tmp"))
        os.chmod(d, 0o755)
        r = subprocess.run(cc + ["-static", "-O1", "-Wall", "-o", str(d / "probe"), str(PROBE_C)],
                           capture_output=True, text=True)
        if r.returncode != 0 or elf_arch(d / "probe") != arch:
            shutil.rmtree(d, ignore_errors=True)
            missing(f"a static {abi} C toolchain ({' '.join(cc)} -static failed: {r.stderr.strip()[:300]})",
                    f"apt-get install {pkgs}")
        os.chmod(d / "probe", 0o755)
        _built[key] = d
    yield _built[key]
    for d in _built.values():
        shutil.rmtree(d, ignore_errors=True)
    _built.clear()
