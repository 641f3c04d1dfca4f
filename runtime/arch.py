"""CPU architectures: names, ELF identification, and whether this host can run a foreign one.

pirun names an architecture as `uname -m` does (`aarch64`, `x86_64`, `armv7l` ...); `ARCHES` maps each to its
Debian architecture, ELF machine and class, and qemu-user name. Used by the rootfs builder (runtime/rootfs.py)
and by `run.py --check` (runtime/check.py); not on run.py's start-up path.

    normalize_arch("arm64") -> "aarch64"           SpecError for a name pirun does not know
    elf_arch(path)          -> "aarch64" | None    from the ELF header of a host file
    elf_arch_in_root(root, "/bin/sh")              the same for a path inside a rootfs, resolved as run.py
                                                   resolves it (fs.open_in_root: symlinks stay inside ROOT)
    binfmt_entry("aarch64") -> (registered, enabled, flags, interpreter) of binfmt_misc's qemu-aarch64
    COMPAT_ABI["aarch64"]   -> "armv7l": the 32-bit userland the host's kernel runs natively
"""
import os
import stat

from runtime.errors import SetupError, SpecError

# uname -m name -> (Debian architecture, ELF e_machine, ELF class (1: 32-bit, 2: 64-bit), qemu-user name)
ARCHES = {
    "aarch64": ("arm64", 183, 2, "aarch64"),
    "x86_64": ("amd64", 62, 2, "x86_64"),
    "armv7l": ("armhf", 40, 1, "arm"),
    "i686": ("i386", 3, 1, "i386"),
    "riscv64": ("riscv64", 243, 2, "riscv64"),
    "ppc64le": ("ppc64el", 21, 2, "ppc64le"),
    "s390x": ("s390x", 22, 2, "s390x"),
}
# The 32-bit userland a 64-bit kernel of each architecture runs itself (CONFIG_COMPAT; uname -m of its
# binaries): no emulator needed, and the default seccomp filter covers its ABI too.
COMPAT_ABI = {"x86_64": "i686", "aarch64": "armv7l"}
ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "armhf": "armv7l", "arm": "armv7l", "i386": "i686",
           "ppc64el": "ppc64le"}
BINFMT = "/proc/sys/fs/binfmt_misc"


def normalize_arch(name):
    """'host', 'arm64', 'aarch64', 'amd64' ... -> the uname -m name used everywhere in pirun."""
    if name == "host":
        name = os.uname().machine
    name = ALIASES.get(name, name)
    if name.startswith("armv7") or name.startswith("armv8l"):
        name = "armv7l"
    if name not in ARCHES:
        raise SpecError(f"unknown architecture {name!r}", fix="use --arch aarch64, --arch x86_64 or --arch host")
    return name


def _elf_head(head):
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    for arch, (_deb, em, elf_class, _q) in ARCHES.items():
        if em == machine and elf_class == head[4]:
            return arch
    return None


def elf_arch(path):
    """The uname -m name for an ELF executable, None when the file is not ELF or of an unknown machine."""
    try:
        with open(path, "rb") as f:
            return _elf_head(f.read(20))
    except OSError:
        return None


def elf_arch_in_root(root, path):
    """elf_arch() of `path` as seen inside the rootfs `root`: resolved with fs.open_in_root, so an absolute
    symlink restarts at ROOT and `..` stops there, exactly as run.py resolves paths in a rootfs. None when the
    path does not resolve inside ROOT (dangling link, loop) or is not an ELF file of a known machine."""
    from runtime.fs import fd_path, open_in_root
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = open_in_root(root_fd, path, "read")
    except SetupError:
        return None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None                       # never open a fifo or device of a hostile rootfs
        return elf_arch(fd_path(fd))          # reopens the O_PATH fd read-only through /proc
    finally:
        os.close(fd)


def binfmt_entry(arch):
    """(registered, enabled, flags, interpreter) of the qemu-user binfmt_misc entry for `arch`."""
    qemu = ARCHES[arch][3]
    try:
        with open(f"{BINFMT}/qemu-{qemu}") as f:
            lines = f.read().splitlines()
    except OSError:
        return (False, False, "", "")
    enabled = bool(lines) and lines[0].strip() == "enabled"
    flags = interp = ""
    for line in lines:
        if line.startswith("flags:"):
            flags = line.split(":", 1)[1].strip()
        elif line.startswith("interpreter "):
            interp = line.split(" ", 1)[1].strip()
    try:
        with open(f"{BINFMT}/status") as f:
            enabled = enabled and f.read().strip() == "enabled"
    except OSError:
        enabled = False
    return (True, enabled, flags, interp)
