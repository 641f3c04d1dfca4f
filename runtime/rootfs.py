"""Build a root filesystem for pirun from Debian's packages (busybox-static, iputils-ping, wget and their shared
libraries) or from a pinned Alpine tarball.

    python3 -m runtime.rootfs --arch aarch64 --dest rootfs_arm      # the Pi's architecture
    python3 -m runtime.rootfs --arch host --dest rootfs_host        # the host's architecture
    python3 -m runtime.rootfs --arch aarch64 --dest DIR --deb busybox-static_..._arm64.deb
    python3 -m runtime.rootfs --dest DIR --alpine alpine-minirootfs-3.20.3-aarch64.tar.gz --sha256 HEX

Busybox recipe: `apt-get download busybox-static:ARCH` into a cache directory (or --deb), `dpkg-deb -x`, keep
/bin/busybox, one relative symlink per applet (`busybox --list-full`, run natively, through binfmt_misc, through
qemu-ARCH-static, or taken from the host's busybox of the same version), /etc/passwd, /etc/group,
/etc/os-release, /etc/nsswitch.conf, the empty mount targets /etc/hosts, /etc/hostname, /etc/resolv.conf
(run.py bind-mounts generated files on them and never edits the rootfs) and the directories a runtime needs.
DEST/.pirun-rootfs records what was built (`arch=aarch64` ...).

Tools recipe (skipped with --busybox-only): `apt-get download` the packages of TOOLS and LIBRARY_PACKAGES
for ARCH into the same cache, `dpkg-deb -x` them, install TOOLS' programs over busybox's applets of the same
name (ping, wget), then every shared library they need, found by reading DT_NEEDED and PT_INTERP from the ELF
files (any architecture, nothing is executed), at the path its package gives it.

The tree is built in a hidden temporary directory next to DEST and renamed into place, so a failure, Ctrl-C or
SIGTERM leaves no half-built rootfs. An existing pirun rootfs is only replaced with --force; a DEST that holds
only the recipe's README.md (rootfs_arm/) is filled and keeps its README.md.

Errors are one line `rootfs: error: ...; fix: ...` and exit status 1 (130 when interrupted). This is a build
tool, not the hot path: it may import anything from the stdlib.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile

from runtime.arch import ARCHES, COMPAT_ABI, binfmt_entry, elf_arch, elf_arch_in_root, normalize_arch
from runtime.errors import PirunError
from runtime.fs import resolve_in_root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = ".pirun-rootfs"
KEEP = ("README.md",)          # files of DEST that survive a build (the recipe in rootfs_arm/)

APPLET_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")
DIRS = (  # (path, mode)
    ("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
    ("usr/lib", 0o755), ("lib", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
    ("tmp", 0o1777), ("root", 0o700), ("run", 0o755), ("var", 0o755), ("var/tmp", 0o1777),
    ("var/log", 0o755), ("var/cache", 0o755), ("var/lib", 0o755), ("home", 0o755), ("mnt", 0o755),
    ("opt", 0o755), ("srv", 0o755), ("media", 0o755),
)
MOUNT_TARGETS = ("etc/hosts", "etc/hostname", "etc/resolv.conf")   # empty files, bind-mounted by run.py
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:65534:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:operator:/root:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:15:
dialout:x:20:
cdrom:x:24:
sudo:x:27:
audio:x:29:
www-data:x:33:
operator:x:37:
video:x:44:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""


class RootfsError(PirunError):
    """The rootfs could not be built (this tool's own error; run.py never sees it)."""


class Interrupted(Exception):
    pass


# ---------------------------------------------------------------- the marker (also read by check.py)
# Architecture names and ELF/binfmt_misc helpers live in runtime/arch.py.

def read_marker(root):
    """The key=value pairs of ROOT/.pirun-rootfs ({} when absent)."""
    info = {}
    try:
        with open(os.path.join(root, MARKER)) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    info[key] = value
    except OSError:
        pass
    return info


def build_command(arch, dest):
    """The command that builds a busybox rootfs for `arch` at `dest` (for error messages)."""
    arch_arg = "host" if arch == os.uname().machine else arch
    return f"cd {REPO} && python3 -m runtime.rootfs --arch {arch_arg} --dest {dest}"


# ---------------------------------------------------------------- the busybox recipe

def _run(argv, what, fix=None, cwd=None, timeout=300):
    try:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise RootfsError(f"{what}: {argv[0]} not found", fix=fix) from None
    except subprocess.TimeoutExpired:
        raise RootfsError(f"{what}: {argv[0]} did not finish within {timeout} s", fix=fix) from None
    except OSError as e:
        raise RootfsError(f"{what}: {argv[0]}: {e.strerror}", fix=fix) from None
    return proc


def _last_line(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("W: ")]
    return lines[-1] if lines else "(no output)"


def _sha256(path):
    return _digest(path, "sha256")


def _digest(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache():
    """REPO/.cache/debs when writable (gitignored), else $XDG_CACHE_HOME/pirun/debs."""
    repo_cache = os.path.join(REPO, ".cache")
    if os.access(repo_cache if os.path.isdir(repo_cache) else REPO, os.W_OK):
        return os.path.join(repo_cache, "debs")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pirun", "debs")


def _dpkg_arches():
    native = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture",
                  fix="this builder needs Debian's dpkg; elsewhere pass --deb PATH or --alpine")
    foreign = _run(["dpkg", "--print-foreign-architectures"], "dpkg --print-foreign-architectures")
    return {native.stdout.strip()} | set(foreign.stdout.split())


def fetch_debs(arch, cache, packages):
    """{package: path of PACKAGE_*_DEBARCH.deb} for `packages` of `arch`: from the cache when a file's SHA256
    matches apt's lists, else downloaded with one `apt-get download`. When apt cannot answer for a package (no
    lists, no network) its newest cached .deb is used."""
    debarch = ARCHES[arch][0]
    specs = [f"{p}:{debarch}" for p in packages]
    if debarch not in _dpkg_arches():
        raise RootfsError(f"apt-get download {specs[0]}: {debarch} is not a dpkg architecture of this host",
                          fix=f"dpkg --add-architecture {debarch} && apt-get update (as root; "
                              f"or pass --deb PATH to a downloaded busybox-static_*_{debarch}.deb)")
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise RootfsError(f"cache directory {cache}: {e.strerror}", fix="pass --cache DIR (a writable directory)")

    def cached(pkg):
        names = sorted((f for f in os.listdir(cache) if f.startswith(f"{pkg}_") and f.endswith(f"_{debarch}.deb")),
                       key=lambda f: os.stat(os.path.join(cache, f)).st_mtime)
        return os.path.join(cache, names[-1]) if names else None

    wanted = {}                 # package -> (file name, sha256) from apt's lists
    uris = _run(["apt-get", "download", "--print-uris", *specs], f"apt-get download {' '.join(specs)}",
                fix="this builder needs Debian's apt; elsewhere pass --deb PATH and --busybox-only")
    if uris.returncode != 0 and len(specs) > 1:     # one unknown name fails the whole call: ask one by one
        lines = []
        for spec in specs:
            one = _run(["apt-get", "download", "--print-uris", spec], f"apt-get download {spec}")
            lines += one.stdout.splitlines() if one.returncode == 0 else []
    else:
        lines = uris.stdout.splitlines() if uris.returncode == 0 else []
    for line in lines:
        fields = line.split()
        # apt prints the strongest hash its lists have: SHA256 from Debian's archive, SHA512 from a local
        # repository made by apt-ftparchive
        algo, _, digest = fields[3].partition(":") if len(fields) >= 4 else ("", "", "")
        if fields[1:2] and fields[1].endswith(".deb") and algo in ("SHA256", "SHA512") and digest:
            pkg = fields[1].split("_", 1)[0]
            if pkg in packages:
                wanted[pkg] = (fields[1], algo.lower(), digest.lower())
    result, download = {}, []
    for pkg in packages:
        if pkg not in wanted:
            fallback = cached(pkg)
            if fallback is None:
                raise RootfsError(f"apt-get download {pkg}:{debarch}: {_last_line(uris.stderr)}",
                                  fix=f"apt-get update (as root; dpkg --add-architecture {debarch} first if "
                                      f"needed); without apt: --deb PATH (busybox-static) and --busybox-only")
            print(f"rootfs: warning: apt has no candidate for {pkg}:{debarch} ({_last_line(uris.stderr)}); "
                  f"using the cached {fallback}", file=sys.stderr)
            result[pkg] = fallback
            continue
        name, algo, digest = wanted[pkg]
        path = os.path.join(cache, name)
        if os.path.isfile(path) and _digest(path, algo) == digest:
            result[pkg] = path
        else:
            download.append(pkg)
    if download:
        got = _run(["apt-get", "download", *(f"{p}:{debarch}" for p in download)],
                   f"apt-get download {' '.join(download)}", cwd=cache)
        for pkg in download:
            name, algo, digest = wanted[pkg]
            path = os.path.join(cache, name)
            if os.path.isfile(path) and _digest(path, algo) == digest:
                result[pkg] = path
                continue
            if os.path.isfile(path):
                os.unlink(path)
                raise RootfsError(f"apt-get download {pkg}:{debarch}: {name} does not match the {algo.upper()} in "
                                  f"apt's lists", fix="apt-get update and retry")
            fallback = cached(pkg)
            if fallback is None:
                raise RootfsError(f"apt-get download {pkg}:{debarch}: {_last_line(got.stderr)}",
                                  fix="check the apt sources (apt-get update); without apt: --deb PATH "
                                      "(busybox-static) and --busybox-only")
            print(f"rootfs: warning: apt-get download {pkg}:{debarch} failed ({_last_line(got.stderr)}); "
                  f"using the cached {fallback}", file=sys.stderr)
            result[pkg] = fallback
    return result


def fetch_deb(arch, cache, package="busybox-static"):
    """Path of one package's .deb for `arch` (see fetch_debs)."""
    return fetch_debs(arch, cache, (package,))[package]


def check_deb(deb, arch):
    """(version) of a busybox-static .deb after checking its package name and architecture."""
    if not os.path.isfile(deb):
        raise RootfsError(f"--deb {deb}: no such file", fix="pass the path of a busybox-static_*.deb")
    info = _run(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture"], f"dpkg-deb -f {deb}",
                fix="apt-get install dpkg")
    if info.returncode != 0:
        raise RootfsError(f"dpkg-deb -f {deb}: {_last_line(info.stderr)}", fix="pass a valid .deb file")
    fields = {}
    for line in info.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    debarch = ARCHES[arch][0]
    if fields.get("Package") != "busybox-static":
        raise RootfsError(f"--deb {deb}: package is {fields.get('Package')!r}, not busybox-static",
                          fix=f"apt-get download busybox-static:{debarch}")
    if fields.get("Architecture") != debarch:
        raise RootfsError(f"--deb {deb}: architecture {fields.get('Architecture')}, not {debarch}",
                          fix=f"apt-get download busybox-static:{debarch}")
    return fields.get("Version", "")


def busybox_banner(path):
    """'BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1)' read from the binary itself (any architecture)."""
    with open(path, "rb") as f:
        data = f.read()
    at = data.find(b"BusyBox v")
    if at < 0:
        return None
    end = data.find(b")", at, at + 200)
    stop = data.find(b"\0", at, at + 200)
    if end < 0 or (0 <= stop < end):
        end = data.find(b" ", at + 9, at + 200) - 1
    return data[at:end + 1].decode("ascii", "replace")


def applet_list(busybox, arch):
    """`busybox --list-full` lines and how they were obtained."""
    host = os.uname().machine
    attempts = []
    compat = COMPAT_ABI.get(host) == arch              # the kernel runs it itself (a 32-bit userland)
    if arch == host or compat or binfmt_entry(arch)[1]:
        how = "native" if arch == host else "native 32-bit" if compat else "binfmt_misc"
        attempts.append(([busybox, "--list-full"], how))
    qemu = shutil.which(f"qemu-{ARCHES[arch][3]}-static") or shutil.which(f"qemu-{ARCHES[arch][3]}")
    if arch != host and qemu:
        attempts.append(([qemu, busybox, "--list-full"], os.path.basename(qemu)))
    errors = []
    for argv, how in attempts:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{how}: {e}")
            continue
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split(), how
        errors.append(f"{how}: exit {proc.returncode} {_last_line(proc.stderr)}")
    host_bb = shutil.which("busybox")
    if host_bb:
        host_bb = os.path.realpath(host_bb)
    if host_bb and busybox_banner(host_bb) == busybox_banner(busybox):
        proc = subprocess.run([host_bb, "--list-full"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split(), f"host {host_bb} (same version)"
    detail = "; ".join(errors) or f"cannot run {arch} binaries here and no host busybox of the same version"
    raise RootfsError(f"busybox --list-full ({arch}): {detail}",
                      fix="apt-get install qemu-user-static binfmt-support (or apt-get install busybox-static "
                          "for the host's applet list)")


def _mkdirs(root):
    for rel, mode in DIRS:
        path = os.path.join(root, rel)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            continue            # Alpine and usrmerged trees have their own layout: keep it
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    run_link = os.path.join(root, "var", "run")
    if not os.path.lexists(run_link):
        os.symlink("../run", run_link)


def _write(root, rel, text, mode=0o644):
    path = os.path.join(root, rel)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _mount_targets(root):
    """Empty regular files where run.py bind-mounts generated ones (a symlink there would be resolved at mount
    time, so it is replaced by a plain file)."""
    for rel in MOUNT_TARGETS:
        path = os.path.join(root, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            continue
        _write(root, rel, "")


# ---------------------------------------------------------------- tools that replace busybox applets

# Debian packages whose programs replace busybox's applets of the same name (package -> paths taken from it).
# Busybox 1.35's ping opens only raw sockets (NET_RAW, which pirun's default capability set leaves out, as
# podman's does); iputils' ping opens an ICMP datagram socket first, which the container's ping_group_range
# ("0 0") allows. Busybox 1.35's wget segfaults whenever -T is given. Both are dynamically linked: the shared
# libraries they need (DT_NEEDED, followed transitively) are taken from LIBRARY_PACKAGES, Debian 12's names.
TOOLS = (
    ("iputils-ping", ("bin/ping", "bin/ping4", "bin/ping6")),
    ("wget", ("usr/bin/wget",)),
)
# The shell: busybox-static's ash prefers its own applets to the programs on PATH (FEATURE_SH_STANDALONE), so
# `ping` or `wget` typed at its prompt would still be busybox's. /bin/sh and /bin/ash are Debian's dynamically
# linked busybox instead (same version, applets found on PATH first); every other applet stays busybox-static's.
SHELL = ("busybox", "bin/busybox", "bin/busybox-sh", ("bin/sh", "bin/ash"))
LIBRARY_PACKAGES = ("libc6", "libcap2", "libidn2-0", "libunistring2", "libgnutls30", "libnettle8", "libhogweed6",
                    "libgmp10", "libp11-kit0", "libtasn1-6", "libffi8", "libpsl5", "libpcre2-8-0", "libuuid1",
                    "zlib1g", "libgcc-s1")      # libgcc-s1: armhf's libffi needs libgcc_s
LIBRARY_DIRS = ("lib", "usr/lib")       # searched, with their multiarch subdirectories, inside the packages


def tool_packages():
    return tuple(pkg for pkg, _paths in TOOLS) + (SHELL[0],) + LIBRARY_PACKAGES


def elf_dynamic(path):
    """(interpreter, [DT_NEEDED sonames]) of an ELF file; (None, []) for a static or non-ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2):
        return None, []
    wide = data[4] == 2
    order = "little" if data[5] == 1 else "big"

    def num(off, size):
        return int.from_bytes(data[off:off + size], order)

    word = 8 if wide else 4
    phoff = num(0x20, 8) if wide else num(0x1c, 4)
    phentsize, phnum = (num(0x36, 2), num(0x38, 2)) if wide else (num(0x2a, 2), num(0x2c, 2))
    interp, dynamic, loads = None, None, []
    for i in range(phnum):
        ph = phoff + i * phentsize
        ptype = num(ph, 4)
        if wide:
            offset, vaddr, filesz = num(ph + 8, 8), num(ph + 16, 8), num(ph + 32, 8)
        else:
            offset, vaddr, filesz = num(ph + 4, 4), num(ph + 8, 4), num(ph + 16, 4)
        if ptype == 1:                                          # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif ptype == 2:                                        # PT_DYNAMIC
            dynamic = (offset, filesz)
        elif ptype == 3:                                        # PT_INTERP
            interp = data[offset:offset + filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return interp, []
    needed, strtab = [], None
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 2 * word):
        tag, value = num(off, word), num(off + word, word)
        if tag == 0:                                            # DT_NULL
            break
        if tag == 1:                                            # DT_NEEDED
            needed.append(value)
        elif tag == 5:                                          # DT_STRTAB (a virtual address)
            strtab = next((value - vaddr + offset for vaddr, offset, size in loads
                           if vaddr <= value < vaddr + size), None)
    if strtab is None:
        return interp, []
    return interp, [data[strtab + n:data.index(b"\0", strtab + n)].decode() for n in needed]


def find_library(unpack, soname):
    """Path inside `unpack` (relative) of the library file named `soname`, in lib/, usr/lib/ or a multiarch
    subdirectory of them; None when no package provides it."""
    for top in LIBRARY_DIRS:
        base = os.path.join(unpack, top)
        if not os.path.isdir(base):
            continue
        subdirs = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
                         and not os.path.islink(os.path.join(base, d)) and "-linux-" in d)
        for sub in (*(os.path.join(top, d) for d in subdirs), top):
            if os.path.lexists(os.path.join(unpack, sub, soname)):
                return os.path.join(sub, soname)
    return None


def _copy_resolved(unpack, rel, root, dest_rel):
    """Copy the file `rel` of the unpacked packages (its symlinks resolved inside them) to ROOT/dest_rel."""
    src = resolve_in_root(unpack, "/" + rel)
    if src is None or not os.path.isfile(src):
        raise RootfsError(f"{rel}: dangling link in the unpacked packages", fix="apt-get update and rebuild")
    dest = os.path.join(root, dest_rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        os.unlink(dest)
    shutil.copyfile(src, dest)
    os.chmod(dest, os.stat(src).st_mode & 0o755)      # no setuid bits; libraries stay 0644


def install_tools(root, arch, debs):
    """Unpack the tool and library packages, install TOOLS over busybox's applets and every shared library they
    need (transitively, by DT_NEEDED) with their interpreter. Returns (tools, libraries) counts."""
    unpack = os.path.join(root, ".unpack-tools")
    for pkg, deb in debs.items():
        got = _run(["dpkg-deb", "-x", deb, unpack], f"dpkg-deb -x {deb}", fix="apt-get install dpkg")
        if got.returncode != 0:
            raise RootfsError(f"dpkg-deb -x {deb}: {_last_line(got.stderr)}",
                              fix=f"remove {deb} and rebuild (it is downloaded again)")
    todo, tools = [], 0
    for pkg, paths in TOOLS:
        for rel in paths:
            src = os.path.join(unpack, rel)
            dest = os.path.join(root, rel)
            if os.path.islink(src):
                if os.path.lexists(dest):
                    os.unlink(dest)
                target = os.readlink(src)
                if target.startswith("/") or resolve_in_root(unpack, "/" + rel) is None:
                    raise RootfsError(f"{pkg}: {rel} -> {target} is not a relative link to one of its files",
                                      fix="apt-get update and rebuild")
                os.symlink(target, dest)
                continue
            if not os.path.isfile(src) or elf_arch(src) != arch:
                raise RootfsError(f"{pkg} ({debs[pkg]}): {rel} is missing or not an {arch} executable",
                                  fix=f"apt-get download {pkg}:{ARCHES[arch][0]} (apt-get update first)")
            _copy_resolved(unpack, rel, root, rel)
            todo.append(rel)
            tools += 1
    pkg, rel, dest_rel, links = SHELL
    src = os.path.join(unpack, rel)
    if not os.path.isfile(src) or elf_arch(src) != arch:
        raise RootfsError(f"{pkg} ({debs.get(pkg)}): {rel} is missing or not an {arch} executable",
                          fix=f"apt-get download {pkg}:{ARCHES[arch][0]} (apt-get update first)")
    _copy_resolved(unpack, rel, root, dest_rel)
    todo.append(dest_rel)
    for link in links:
        path = os.path.join(root, link)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(os.path.relpath(dest_rel, os.path.dirname(link)), path)
    done, libraries = set(todo), 0
    while todo:
        rel = todo.pop()
        interp, needed = elf_dynamic(os.path.join(root, rel))
        wants = [(soname, find_library(unpack, soname)) for soname in needed]
        if interp:
            target = resolve_in_root(unpack, interp)
            if target is None:
                raise RootfsError(f"{rel}: interpreter {interp} is in none of the packages "
                                  f"({' '.join(LIBRARY_PACKAGES)})", fix="add its package to LIBRARY_PACKAGES")
            real = os.path.relpath(target, unpack)
            if interp.lstrip("/") != real:          # e.g. /lib64/ld-linux-x86-64.so.2 -> the multiarch file
                link = os.path.join(root, interp.lstrip("/"))
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if not os.path.lexists(link):
                    os.symlink(os.path.relpath(os.path.join(root, real), os.path.dirname(link)), link)
            wants.append((interp, real))
        for soname, lib in wants:
            if lib is None:
                raise RootfsError(f"{rel} needs {soname}, which none of the packages provides "
                                  f"({' '.join(LIBRARY_PACKAGES)})",
                                  fix="add the package that ships it to LIBRARY_PACKAGES in runtime/rootfs.py")
            if lib in done:
                continue
            _copy_resolved(unpack, lib, root, lib)
            done.add(lib)
            todo.append(lib)
            libraries += 1
    shutil.rmtree(unpack)
    return tools, libraries


def build_busybox(tmp, arch, deb, tool_debs=None):
    version = check_deb(deb, arch)
    unpack = os.path.join(tmp, ".unpack")
    got = _run(["dpkg-deb", "-x", deb, unpack], f"dpkg-deb -x {deb}", fix="apt-get install dpkg")
    if got.returncode != 0:
        raise RootfsError(f"dpkg-deb -x {deb}: {_last_line(got.stderr)}", fix="pass a valid .deb file")
    src = os.path.join(unpack, "bin", "busybox")
    if elf_arch(src) != arch:
        raise RootfsError(f"{deb}: bin/busybox is {elf_arch(src) or 'not an ELF executable'}, not {arch}",
                          fix=f"apt-get download busybox-static:{ARCHES[arch][0]}")
    _mkdirs(tmp)
    busybox = os.path.join(tmp, "bin", "busybox")
    shutil.copyfile(src, busybox)
    os.chmod(busybox, 0o755)
    shutil.rmtree(unpack)

    applets, how = applet_list(busybox, arch)
    count = 0
    for entry in applets:
        parts = entry.split("/")
        parent = "/".join(parts[:-1])
        if parent not in APPLET_DIRS or not parts[-1] or parts[-1] in (".", "..") or entry == "bin/busybox":
            continue            # e.g. `linuxrc`: not a command
        link = os.path.join(tmp, entry)
        if os.path.lexists(link):
            continue
        os.symlink(os.path.relpath("bin/busybox", parent), link)
        count += 1
    if not os.path.islink(os.path.join(tmp, "bin", "sh")):
        raise RootfsError(f"busybox --list-full ({how}) has no bin/sh", fix="use Debian's busybox-static")
    tools = libraries = 0
    if tool_debs:
        tools, libraries = install_tools(tmp, arch, tool_debs)
        _write(tmp, "etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")

    banner = busybox_banner(busybox) or f"BusyBox {version}"
    bb_version = banner.split()[1].lstrip("v") if len(banner.split()) > 1 else version
    _write(tmp, "etc/passwd", PASSWD)
    _write(tmp, "etc/group", GROUP)
    _write(tmp, "etc/shells", "/bin/sh\n/bin/ash\n")
    _write(tmp, "etc/os-release",
           'NAME="pirun busybox rootfs"\n'
           "ID=pirun-busybox\n"
           f'VERSION_ID="{bb_version}"\n'
           f'VERSION="BusyBox {bb_version} (Debian busybox-static {version}, {arch})"\n'
           f'PRETTY_NAME="pirun busybox rootfs (BusyBox {bb_version}, {arch})"\n'
           f"BUSYBOX_VERSION={bb_version}\n"
           f"PIRUN_ARCH={arch}\n")
    _mount_targets(tmp)
    _write(tmp, MARKER, f"arch={arch}\nkind=busybox\nbusybox={bb_version}\n"
                        f"source=busybox-static {version} {ARCHES[arch][0]}\nsha256={_sha256(deb)}\n"
                        f"applets={count}\napplet_list={how}\n"
                        + "".join(f"tool={p} {os.path.basename(d)}\n" for p, d in sorted((tool_debs or {}).items())))
    what = f"BusyBox {bb_version}, {count} applets (list: {how})"
    if tool_debs:
        what += f", {tools} programs from {' '.join(p for p, _ in TOOLS)} with {libraries} shared libraries"
    return what


# ---------------------------------------------------------------- the Alpine minirootfs option

def _safe_members(tar, tarball):
    """Check every member before anything is written: relative names without `..`, no duplicates, only
    files, directories, symlinks and hard links (no device nodes, fifos), nothing below a symlink member, hard
    links only to other members; setuid/setgid bits are dropped (the tree is owned by a host user)."""
    members = tar.getmembers()
    names = {}
    symlinks = set()
    for m in members:
        name = m.name
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/")
        if name in ("", "."):
            continue
        if name.startswith("/") or ".." in name.split("/") or "" in name.split("/") or "\0" in name:
            raise RootfsError(f"{tarball}: unsafe member {m.name!r} (absolute or with '..')",
                              fix="use an official Alpine minirootfs tarball")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise RootfsError(f"{tarball}: member {m.name!r} is a device node, fifo or other special file",
                              fix="use an official Alpine minirootfs tarball")
        if name in names:
            raise RootfsError(f"{tarball}: member {m.name!r} appears twice",
                              fix="use an official Alpine minirootfs tarball")
        names[name] = m
        if m.issym():
            symlinks.add(name)
    result = []
    for name, m in names.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise RootfsError(f"{tarball}: member {m.name!r} lies below the symlink {'/'.join(parts[:i])!r}",
                                  fix="use an official Alpine minirootfs tarball")
        if m.islnk():
            target = m.linkname
            while target.startswith("./"):
                target = target[2:]
            if target not in names or not names[target].isreg():
                raise RootfsError(f"{tarball}: hard link {m.name!r} points to {m.linkname!r}, not a file member",
                                  fix="use an official Alpine minirootfs tarball")
            m.linkname = target
        m.name = name
        m.mode &= 0o1777
        result.append(m)
    return result


def build_alpine(tmp, tarball, sha256, arch):
    if not os.path.isfile(tarball):
        raise RootfsError(f"--alpine {tarball}: no such file", fix="download the minirootfs tarball first")
    got = _sha256(tarball)
    if got != sha256.lower():
        raise RootfsError(f"--alpine {tarball}: sha256 is {got}, expected {sha256.lower()}",
                          fix="download the tarball again and compare with its .sha256 from the Alpine mirror")
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = _safe_members(tar, tarball)
            kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(tmp, members=members, numeric_owner=True, **kwargs)  # members checked above
    except tarfile.TarError as e:
        raise RootfsError(f"--alpine {tarball}: {e}", fix="pass a .tar.gz minirootfs") from None
    found = elf_arch_in_root(tmp, "/bin/sh")
    if found is None:
        raise RootfsError(f"--alpine {tarball}: no ELF /bin/sh inside", fix="pass an Alpine minirootfs tarball")
    if arch and found != arch:
        raise RootfsError(f"--alpine {tarball}: /bin/sh is {found}, not {arch}",
                          fix=f"download the {arch} minirootfs, or drop --arch")
    _mkdirs(tmp)
    _mount_targets(tmp)
    release = ""
    try:
        with open(os.path.join(tmp, "etc", "alpine-release")) as f:
            release = f.read().strip()
    except OSError:
        pass
    _write(tmp, MARKER, f"arch={found}\nkind=alpine\nalpine={release}\n"
                        f"source={os.path.basename(tarball)}\nsha256={got}\n")
    return f"Alpine {release or '(unknown release)'}"


# ---------------------------------------------------------------- atomic placement

def check_dest(dest, force):
    """Refuse to clobber anything but an earlier pirun rootfs (and that only with --force)."""
    if os.path.islink(dest):
        raise RootfsError(f"--dest {dest}: is a symlink", fix="pass the directory it points to")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise RootfsError(f"--dest {dest}: exists and is not a directory", fix="remove it or pick another --dest")
    if not os.path.isdir(dest):
        return
    entries = set(os.listdir(dest))
    if entries <= set(KEEP):
        return
    if MARKER in entries:
        if force:
            return
        info = read_marker(dest)
        raise RootfsError(f"--dest {dest}: already holds a pirun rootfs (arch={info.get('arch', '?')})",
                          fix="add --force to rebuild it (containers using it must be stopped first)")
    raise RootfsError(f"--dest {dest}: not empty and not a pirun rootfs (no {MARKER})",
                      fix=f"remove it (rm -rf {dest}) or pick another --dest")


def place(tmp, dest):
    """Rename the finished tree to DEST. An existing DEST is swapped out with two renames while SIGINT, SIGTERM
    and SIGHUP are blocked, then removed; its README.md was copied into the new tree before. On success the
    signals stay blocked: the build is complete and the process is about to exit, so a late Ctrl-C must
    neither leave the old tree behind nor report a finished build as interrupted."""
    for keep in KEEP:
        src = os.path.join(dest, keep)
        if os.path.isfile(src) and not os.path.islink(src):
            shutil.copy2(src, os.path.join(tmp, keep))
    os.chmod(tmp, 0o755)
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        if not os.path.lexists(dest):
            os.rename(tmp, dest)
            return
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(dest))
        try:
            os.rename(dest, old)    # replaces the empty directory made by mkdtemp
        except OSError:
            os.rmdir(old)
            raise
        try:
            os.rename(tmp, dest)
        except OSError:
            os.rename(old, dest)
            raise
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- command line

USAGE = """\
usage: python3 -m runtime.rootfs --arch aarch64|x86_64|host --dest DIR [--deb PATH] [--cache DIR] [--force]
                                 [--busybox-only]
       python3 -m runtime.rootfs --dest DIR --alpine TARBALL --sha256 HEX [--arch ARCH] [--force]
Builds a busybox rootfs from Debian's busybox-static (--deb, or apt-get download into --cache) with Debian's
iputils ping and GNU wget and their shared libraries (not with --busybox-only), or unpacks a pinned Alpine
minirootfs. DIR/.pirun-rootfs records the architecture and the packages."""


def parse(argv):
    opts = {"arch": None, "dest": None, "deb": None, "alpine": None, "sha256": None, "cache": None,
            "force": False, "busybox_only": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            return None
        if arg in ("--force", "--busybox-only"):
            opts[arg[2:].replace("-", "_")] = True
            continue
        key, eq, value = arg.partition("=")
        if not key.startswith("--") or key[2:] not in opts or key in ("--force", "--busybox_only"):
            raise RootfsError(f"unknown option {arg!r}", fix="see python3 -m runtime.rootfs --help")
        if not eq:
            if not args:
                raise RootfsError(f"option {key} needs a value", fix="see python3 -m runtime.rootfs --help")
            value = args.pop(0)
        opts[key[2:]] = value
    if not opts["dest"]:
        raise RootfsError("--dest DIR is required", fix="e.g. --dest rootfs_arm")
    if opts["alpine"]:
        if opts["deb"]:
            raise RootfsError("--deb and --alpine exclude each other", fix="pick one recipe")
        sha = opts["sha256"] or ""
        if len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            raise RootfsError("--alpine needs --sha256 with the tarball's 64-digit hex SHA256",
                              fix="take it from the .sha256 file next to the tarball on the Alpine mirror")
    elif opts["sha256"]:
        raise RootfsError("--sha256 only applies to --alpine", fix="drop --sha256")
    elif not opts["arch"]:
        raise RootfsError("--arch is required", fix="--arch aarch64 (Raspberry Pi), or --arch host")
    if opts["arch"]:
        opts["arch"] = normalize_arch(opts["arch"])
    return opts


def build(opts):
    dest = os.path.abspath(opts["dest"])
    check_dest(dest, opts["force"])
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise RootfsError(f"--dest {dest}: parent directory {parent} does not exist", fix=f"mkdir -p {parent}")
    if not opts["alpine"]:          # fetch before creating anything next to DEST
        cache = opts["cache"] or default_cache()
        wanted = (() if opts["deb"] else ("busybox-static",)) + (() if opts["busybox_only"] else tool_packages())
        debs = fetch_debs(opts["arch"], cache, wanted) if wanted else {}
        deb = opts["deb"] or debs.pop("busybox-static")
        tool_debs = debs
    tmp = None
    try:
        try:
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
        except OSError as e:
            raise RootfsError(f"--dest {dest}: cannot create a directory in {parent}: {e.strerror}",
                              fix="pick a --dest in a writable directory") from None
        if opts["alpine"]:
            what = build_alpine(tmp, opts["alpine"], opts["sha256"], opts["arch"])
        else:
            what = build_busybox(tmp, opts["arch"], deb, tool_debs)
        arch = read_marker(tmp)["arch"]
        place(tmp, dest)
    finally:
        if tmp and os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return f"rootfs: built {dest} ({arch}; {what})"


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        opts = parse(argv)
        if opts is None:
            print(USAGE)
            return 0
        print(build(opts))
        return 0
    except PirunError as e:
        print(f"rootfs: error: {e.line()}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"rootfs: error: {where}{e.strerror or e}; fix: check the permissions and free space there",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rootfs: interrupted (SIGINT); nothing was left behind", file=sys.stderr)
        return 128 + signal.SIGINT
    except Interrupted as e:
        print(f"rootfs: interrupted ({e}); nothing was left behind", file=sys.stderr)
        return 128 + signal.Signals[str(e)]


if __name__ == "__main__":
    sys.exit(main())
