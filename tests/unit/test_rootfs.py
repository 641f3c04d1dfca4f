"""The rootfs builder (runtime/rootfs.py): the built trees, building into a scratch directory, its refusals,
atomicity on failure and interruption, and the Alpine tarball's safety checks. No containers are started;
the arm64 busybox is executed directly through binfmt_misc."""
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO, missing
from runtime import arch as ar
from runtime import rootfs as rf

PY = sys.executable


def build(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))       # cwd may be a scratch directory
    return subprocess.run([PY, "-m", "runtime.rootfs", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(r, text):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("rootfs: error: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert text in r.stderr, r.stderr


def leftovers(parent, name):
    return [e for e in os.listdir(parent) if e.startswith(f".{name}.")]


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def check_tree(root, arch):
    """What every busybox rootfs must hold."""
    assert rf.read_marker(root)["arch"] == arch
    busybox = os.path.join(root, "bin", "busybox")
    assert os.path.isfile(busybox) and not os.path.islink(busybox)
    assert os.stat(busybox).st_mode & 0o7777 == 0o755
    # one relative link per applet, each resolving to bin/busybox inside the tree (or to a program of TOOLS)
    tools = {os.path.realpath(os.path.join(root, rel)) for _pkg, paths in rf.TOOLS for rel in paths}
    with_tools = "tool=" in open(os.path.join(root, rf.MARKER)).read()
    if with_tools:
        tools.add(os.path.realpath(os.path.join(root, rf.SHELL[2])))      # /bin/sh, /bin/ash
    links = 0
    for d in rf.APPLET_DIRS:
        for name in os.listdir(os.path.join(root, d)):
            path = os.path.join(root, d, name)
            if os.path.islink(path):
                target = os.readlink(path)
                assert not target.startswith("/"), f"{path} -> {target} is absolute"
                assert os.path.realpath(path) in {os.path.realpath(busybox)} | tools, path
                links += 1
    assert links > 200
    assert os.readlink(os.path.join(root, "bin", "sh")) == ("busybox-sh" if with_tools else "busybox")
    assert os.readlink(os.path.join(root, "usr", "bin", "awk")) == "../../bin/busybox"
    with open(os.path.join(root, "etc", "passwd")) as f:
        passwd = f.read()
    assert passwd.startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert "\nnobody:x:65534:65534:" in passwd
    with open(os.path.join(root, "etc", "group")) as f:
        group = f.read()
    assert group.startswith("root:x:0:\n") and "\nnogroup:x:65534:\n" in group
    with open(os.path.join(root, "etc", "os-release")) as f:
        release = f.read()
    assert 'NAME="pirun busybox rootfs"' in release
    assert f"PIRUN_ARCH={arch}" in release and "BUSYBOX_VERSION=1." in release
    for target in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        path = os.path.join(root, target)
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, f"{target} must be an empty file (mount target)"
    for d in ("proc", "sys", "dev", "root", "run", "etc", "home", "mnt", "usr/bin", "usr/sbin", "sbin"):
        assert os.path.isdir(os.path.join(root, d)) and not os.path.islink(os.path.join(root, d)), d
    for d in ("tmp", "var/tmp"):
        assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o1777, d


# ------------------------------------------------------------------ the trees scripts/setup built

def test_arm_rootfs_busybox_is_an_aarch64_elf(rootfs_arm):
    assert elf_machine(rootfs_arm / "bin" / "busybox") == 183        # EM_AARCH64
    assert ar.elf_arch(rootfs_arm / "bin" / "busybox") == "aarch64"
    check_tree(str(rootfs_arm), "aarch64")


def test_arm_busybox_runs_here_and_says_aarch64(rootfs_arm):
    if os.uname().machine != "aarch64":
        registered, enabled, flags, _ = ar.binfmt_entry("aarch64")
        if not (registered and enabled):
            missing("qemu-aarch64 in binfmt_misc", "apt-get install qemu-user-static binfmt-support")
        assert "F" in flags, "qemu-aarch64 is registered without the F flag"
    r = subprocess.run([str(rootfs_arm / "bin" / "busybox"), "uname", "-m"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "aarch64\n"
    r = subprocess.run([str(rootfs_arm / "bin" / "busybox"), "sh", "-c", "echo $((6 * 7))"], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout == "42\n"


def test_host_rootfs_is_the_host_architecture(rootfs):
    arch = os.uname().machine
    assert ar.elf_arch(rootfs / "bin" / "busybox") == arch
    check_tree(str(rootfs), arch)
    r = subprocess.run([str(rootfs / "bin" / "busybox"), "uname", "-m"], capture_output=True, text=True)
    assert r.stdout == f"{arch}\n"


def test_recipe_readme_is_tracked_and_the_rest_ignored():
    def ignored(path):
        git = ["git", "-c", f"safe.directory={REPO}", "check-ignore", "-q", path]
        return subprocess.run(git, cwd=REPO).returncode == 0

    assert not ignored("rootfs_arm/README.md"), "rootfs_arm/README.md must not be gitignored"
    for path in ("rootfs_arm/bin/busybox", "rootfs_arm/.pirun-rootfs", "rootfs_host/bin/busybox"):
        assert ignored(path), f"{path} must be gitignored"


# ------------------------------------------------------------------ building

@pytest.fixture(scope="module")
def built_arm(tmp_path_factory):
    """One fresh aarch64 build (apt cache or archive); later tests reuse its .deb through --deb."""
    parent = tmp_path_factory.mktemp("arm")
    r = build("--arch", "aarch64", "--dest", parent / "rootfs")
    assert r.returncode == 0, r.stderr
    return parent / "rootfs", r


def cached_deb(arch):
    """busybox-static's .deb for arch, from the builder's cache (downloaded with apt-get when absent)."""
    try:
        return rf.fetch_deb(arch, rf.default_cache())
    except rf.RootfsError as e:
        missing(f"busybox-static:{ar.ARCHES[arch][0]} ({e.message})", e.fix)


def test_build_aarch64(built_arm):
    dest, r = built_arm
    assert r.stdout.startswith(f"rootfs: built {dest} (aarch64; BusyBox 1.")
    check_tree(str(dest), "aarch64")
    marker = rf.read_marker(str(dest))
    assert marker["kind"] == "busybox" and marker["source"].startswith("busybox-static ")
    assert marker["source"].endswith(" arm64")
    assert leftovers(dest.parent, "rootfs") == []


def test_build_host_with_deb_and_cache_option(tmp_path):
    deb = cached_deb(os.uname().machine)
    r = build("--arch", "host", "--dest", tmp_path / "r", "--deb", deb)
    assert r.returncode == 0, r.stderr
    check_tree(str(tmp_path / "r"), os.uname().machine)
    with open(deb, "rb") as f:
        assert rf.read_marker(str(tmp_path / "r"))["sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_existing_rootfs_needs_force_and_keeps_readme(built_arm, tmp_path):
    dest = tmp_path / "rootfs_arm"
    dest.mkdir()
    (dest / "README.md").write_text("the recipe\n")
    deb = cached_deb("aarch64")
    r = build("--arch", "aarch64", "--dest", dest, "--deb", deb)          # only README.md there: filled
    assert r.returncode == 0, r.stderr
    assert (dest / "README.md").read_text() == "the recipe\n"
    (dest / "etc" / "marker-of-old-tree").write_text("old")
    r = build("--arch", "aarch64", "--dest", dest, "--deb", deb)
    assert_one_line_error(r, "already holds a pirun rootfs (arch=aarch64)")
    assert "--force" in r.stderr
    assert (dest / "etc" / "marker-of-old-tree").exists()
    r = build("--arch", "aarch64", "--dest", dest, "--deb", deb, "--force")
    assert r.returncode == 0, r.stderr
    assert not (dest / "etc" / "marker-of-old-tree").exists()
    assert (dest / "README.md").read_text() == "the recipe\n"
    assert leftovers(tmp_path, "rootfs_arm") == []


def test_refuses_a_directory_that_is_not_a_rootfs(tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "data.txt").write_text("keep me")
    r = build("--arch", "host", "--dest", dest, "--force")
    assert_one_line_error(r, "not empty and not a pirun rootfs")
    assert (dest / "data.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["precious"]


def test_deb_of_the_wrong_architecture(tmp_path):
    r = build("--arch", "aarch64", "--dest", tmp_path / "r", "--deb", cached_deb(os.uname().machine))
    if os.uname().machine != "aarch64":
        assert_one_line_error(r, "not arm64")
        assert "apt-get download busybox-static:arm64" in r.stderr
    assert os.listdir(tmp_path) == []


def test_architecture_not_added_to_dpkg_names_the_fix(tmp_path):
    arches = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    arch = next(a for a in ("riscv64", "s390x", "ppc64le")
                if ar.ARCHES[a][0] not in arches.split() and ar.ARCHES[a][0] != native)
    debarch = ar.ARCHES[arch][0]
    r = build("--arch", arch, "--dest", tmp_path / "r", "--cache", tmp_path / "cache")
    assert_one_line_error(r, f"dpkg --add-architecture {debarch} && apt-get update")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, text", [
    (["--arch", "host"], "--dest DIR is required"),
    (["--dest", "x"], "--arch is required"),
    (["--arch", "sparc", "--dest", "x"], "unknown architecture 'sparc'"),
    (["--arch", "host", "--dest", "x", "--bogus"], "unknown option '--bogus'"),
    (["--dest", "x", "--alpine", "a.tar.gz"], "--alpine needs --sha256"),
    (["--dest", "x", "--alpine", "a.tar.gz", "--sha256", "abc"], "--alpine needs --sha256"),
    (["--arch", "host", "--dest", "x", "--sha256", "0" * 64], "--sha256 only applies to --alpine"),
    (["--arch", "host", "--dest", "x", "--deb", "/no/such.deb"], "--deb /no/such.deb: no such file"),
])
def test_usage_errors(tmp_path, args, text):
    r = build(*args, cwd=tmp_path)
    assert_one_line_error(r, text)
    assert os.listdir(tmp_path) == []


def test_help():
    r = build("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python3 -m runtime.rootfs")


# ------------------------------------------------------------------ Alpine tarballs

def add(tar, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def minirootfs(path, extra=(), files=0):
    """An Alpine-like minirootfs from the host's busybox: absolute applet links (as Alpine has them), an
    /etc/hosts with content, /etc/resolv.conf as a symlink, a setuid helper."""
    with open(REPO / "rootfs_host" / "bin" / "busybox", "rb") as f:
        busybox = f.read()
    with tarfile.open(path, "w:gz" if str(path).endswith("gz") else "w") as tar:
        for d in ("./", "./bin", "./etc", "./lib", "./usr", "./usr/bin"):
            add(tar, d, tarfile.DIRTYPE, mode=0o755)
        add(tar, "./bin/busybox", data=busybox, mode=0o755)
        add(tar, "./bin/sh", tarfile.SYMTYPE, link="/bin/busybox")
        add(tar, "./usr/bin/env", tarfile.SYMTYPE, link="/bin/busybox")
        add(tar, "./bin/bbsuid", data=b"#!/bin/sh\n", mode=0o4755)
        add(tar, "./bin/ash", tarfile.LNKTYPE, link="bin/busybox")
        add(tar, "./etc/alpine-release", data=b"3.20.3\n")
        add(tar, "./etc/hosts", data=b"127.0.0.1 localhost\n")
        add(tar, "./etc/resolv.conf", tarfile.SYMTYPE, link="/run/resolv.conf")
        for i in range(files):
            add(tar, f"./usr/bin/f{i}", data=b"x")
        for args in extra:
            add(tar, *args[:1], **args[1])
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_alpine_tarball(tmp_path):
    tarball = tmp_path / "alpine-minirootfs.tar.gz"
    sha = minirootfs(tarball)
    dest = tmp_path / "alp"
    r = build("--dest", dest, "--alpine", tarball, "--sha256", sha.upper())
    assert r.returncode == 0, r.stderr
    arch = os.uname().machine
    assert r.stdout == f"rootfs: built {dest} ({arch}; Alpine 3.20.3)\n"
    marker = rf.read_marker(str(dest))
    assert marker["arch"] == arch and marker["kind"] == "alpine" and marker["sha256"] == sha
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"       # kept: resolved inside the rootfs
    assert ar.elf_arch_in_root(str(dest), "/bin/sh") == arch                # resolved inside the rootfs
    assert os.stat(dest / "bin" / "bbsuid").st_mode & 0o7777 == 0o755, "setuid bit must be dropped"
    assert os.stat(dest / "bin" / "ash").st_ino == os.stat(dest / "bin" / "busybox").st_ino
    for target in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        st = os.lstat(dest / target)
        assert stat.S_ISREG(st.st_mode), f"{target}: a mount target must be a regular file"
    assert (dest / "etc" / "hostname").read_text() == ""
    for d in ("proc", "sys", "dev", "tmp", "root", "run"):
        assert (dest / d).is_dir()
    assert leftovers(tmp_path, "alp") == []


def test_alpine_arch_mismatch(tmp_path):
    tarball = tmp_path / "m.tar.gz"
    sha = minirootfs(tarball)
    other = "aarch64" if os.uname().machine != "aarch64" else "x86_64"
    r = build("--dest", tmp_path / "alp", "--alpine", tarball, "--sha256", sha, "--arch", other)
    assert_one_line_error(r, f"is {os.uname().machine}, not {other}")
    assert sorted(os.listdir(tmp_path)) == ["m.tar.gz"]


@pytest.mark.parametrize("extra, text", [
    ([("/etc/evil", {"data": b"x"})], "unsafe member '/etc/evil'"),
    ([("./../evil", {"data": b"x"})], "unsafe member './../evil'"),
    ([("./etc/../../evil", {"data": b"x"})], "unsafe member"),
    ([("./dev/sda", {"kind": tarfile.CHRTYPE})], "device node"),
    ([("./dev/loop0", {"kind": tarfile.BLKTYPE})], "device node"),
    ([("./fifo", {"kind": tarfile.FIFOTYPE})], "device node, fifo"),
    ([("./escape", {"kind": tarfile.SYMTYPE, "link": "/"}), ("./escape/etc/x", {"data": b"x"})],
     "below the symlink 'escape'"),
    ([("./hl", {"kind": tarfile.LNKTYPE, "link": "/etc/shadow"})], "hard link"),
    ([("./etc/hosts", {"data": b"again"})], "appears twice"),
])
def test_alpine_unsafe_tarballs_are_refused(tmp_path, extra, text):
    tarball = tmp_path / "bad.tar.gz"
    sha = minirootfs(tarball, extra=extra)
    r = build("--dest", tmp_path / "alp", "--alpine", tarball, "--sha256", sha)
    assert_one_line_error(r, text)
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz"], "nothing may be left behind"


def test_alpine_wrong_sha256(tmp_path):
    tarball = tmp_path / "m.tar.gz"
    minirootfs(tarball)
    r = build("--dest", tmp_path / "alp", "--alpine", tarball, "--sha256", "0" * 64)
    assert_one_line_error(r, "sha256 is ")
    assert sorted(os.listdir(tmp_path)) == ["m.tar.gz"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_build_leaves_nothing(tmp_path, sig, code):
    tarball = tmp_path / "big.tar"
    sha = minirootfs(tarball, files=30000)
    proc = subprocess.Popen([PY, "-m", "runtime.rootfs", "--dest", str(tmp_path / "alp"), "--alpine",
                             str(tarball), "--sha256", sha], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path, "alp"):
        assert proc.poll() is None, "the build ended before it could be interrupted"
        assert time.monotonic() < deadline, "no temporary directory appeared"
        time.sleep(0.002)
    time.sleep(0.2)         # extracting by now
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    assert "nothing was left behind" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["big.tar"]


def test_symlinked_dest_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    r = build("--arch", "host", "--dest", tmp_path / "link", "--deb", cached_deb(os.uname().machine))
    assert_one_line_error(r, "is a symlink; fix: pass the directory it points to")
    assert os.listdir(tmp_path / "real") == [] and sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_unrunnable_foreign_busybox_names_qemu(tmp_path):
    """No way to run a (broken) riscv64 busybox and no host busybox of its version: the qemu fix."""
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (243).to_bytes(2, "little") + b"\0" * 44)
    fake.chmod(0o755)
    assert ar.elf_arch(fake) == "riscv64"
    with pytest.raises(rf.RootfsError) as e:
        rf.applet_list(str(fake), "riscv64")
    assert e.value.message.startswith("busybox --list-full (riscv64): ")
    assert e.value.fix.startswith("apt-get install qemu-user-static binfmt-support")


def test_compat_abi_busybox_runs_natively(tmp_path, monkeypatch):
    """The host kernel's 32-bit userland (i686 on x86_64, armv7l on aarch64) runs without an emulator: its
    applet list comes from running it, even with no emulator and no host busybox to fall back on."""
    host = os.uname().machine
    compat = ar.COMPAT_ABI.get(host)
    if compat is None:
        pytest.fail(f"this test needs a host with a 32-bit compat ABI ({', '.join(ar.COMPAT_ABI)}); this is {host}",
                    pytrace=False)
    unpack = tmp_path / "unpack"
    subprocess.run(["dpkg-deb", "-x", cached_deb(compat), str(unpack)], check=True)
    busybox = unpack / "bin" / "busybox"
    assert ar.elf_arch(busybox) == compat
    monkeypatch.setattr(rf.shutil, "which", lambda name, *a, **k: None)      # no qemu, no host busybox
    monkeypatch.setattr(rf, "binfmt_entry", lambda arch: (False, False, "", ""))
    applets, how = rf.applet_list(str(busybox), compat)
    assert how == "native 32-bit"
    assert "bin/sh" in applets and "bin/mkdir" in applets
