"""The rootfs builder's tools recipe (iputils ping, GNU wget and their shared libraries): what a build
installs, --busybox-only, and a library package missing from the list is a one-line error naming the soname,
with nothing left behind. No containers are started (tests/container/test_rootfs_tools.py runs the tools)."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from runtime import rootfs as rf

DROP_ONE = """
import sys
from runtime import rootfs as rf
rf.LIBRARY_PACKAGES = tuple(p for p in rf.LIBRARY_PACKAGES if p != sys.argv[1])
sys.exit(rf.main(sys.argv[2:]))
"""


def build(*args, code=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, "-m", "runtime.rootfs",
                                                                         *map(str, args)]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_tools_replace_the_busybox_applets(tmp_path):
    dest = tmp_path / "r"
    r = build("--arch", "host", "--dest", dest)
    assert r.returncode == 0, r.stderr
    assert "2 programs from iputils-ping wget with 17 shared libraries" in r.stdout, r.stdout
    arch = os.uname().machine
    for rel in ("bin/ping", "usr/bin/wget"):
        path = dest / rel
        assert path.is_file() and not path.is_symlink(), rel
        assert rf.elf_arch(path) == arch
        assert os.stat(path).st_mode & 0o7777 == 0o755, rel          # no setuid bit, no file capability needed
    assert os.readlink(dest / "bin" / "ping6") == "ping"
    interp, needed = rf.elf_dynamic(dest / "usr" / "bin" / "wget")
    assert interp and "libgnutls.so.30" in needed and "libc.so.6" in needed
    assert (dest / "etc" / "nsswitch.conf").read_text().splitlines()[-1] == "hosts: files dns"
    marker = rf.read_marker(str(dest))
    assert marker["tool"]                                              # the last tool= line (one per package)
    assert not list(tmp_path.glob(".r.*")) and not (dest / ".unpack-tools").exists()


def test_busybox_only_keeps_busybox_applets(tmp_path):
    dest = tmp_path / "r"
    r = build("--arch", "host", "--dest", dest, "--busybox-only")
    assert r.returncode == 0, r.stderr
    assert os.readlink(dest / "bin" / "ping") == "busybox"
    assert os.readlink(dest / "usr" / "bin" / "wget") == "../../bin/busybox"
    assert not (dest / "lib64").exists() and not (dest / "etc" / "nsswitch.conf").exists()
    assert "tool" not in rf.read_marker(str(dest))


def test_a_library_package_missing_from_the_list_names_the_soname(tmp_path):
    """The DT_NEEDED walk is what guarantees the tools start: drop libunistring2 and the build fails."""
    dest = tmp_path / "r"
    r = build("libunistring2", "--arch", "host", "--dest", dest, code=DROP_ONE)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("rootfs: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "needs libunistring.so.2, which none of the packages provides" in r.stderr, r.stderr
    assert "LIBRARY_PACKAGES" in r.stderr
    assert os.listdir(tmp_path) == []


def test_a_local_repository_with_sha512_lists_is_used(tmp_path, monkeypatch):
    """apt prints the strongest hash of its lists: SHA512 for a repository made by apt-ftparchive (the VMs'
    local repository), SHA256 for Debian's archive. A cached .deb that matches either is used as is."""
    import hashlib
    import subprocess
    from runtime import arch as ar, rootfs as rf
    debarch = ar.ARCHES[ar.normalize_arch("host")][0]
    deb = tmp_path / f"busybox_1.35_{debarch}.deb"
    deb.write_bytes(b"not really a deb")
    sha512 = hashlib.sha512(deb.read_bytes()).hexdigest()
    calls, real_run = [], rf._run

    def fake_run(argv, what, fix=None, cwd=None, timeout=300):
        if argv[0] != "apt-get":
            return real_run(argv, what, fix=fix, cwd=cwd, timeout=timeout)
        calls.append(argv)
        out = f"'file:/opt/localrepo/./{deb.name}' {deb.name} 16 SHA512:{sha512}\n"
        return subprocess.CompletedProcess(argv, 0, out if "--print-uris" in argv else "", "")
    monkeypatch.setattr(rf, "_run", fake_run)
    assert rf.fetch_debs(ar.normalize_arch("host"), str(tmp_path), ("busybox",)) == {"busybox": str(deb)}
    assert all("--print-uris" in argv for argv in calls), "downloaded although the cached .deb matches"
    deb.write_bytes(b"changed")                     # no longer matching: downloaded again (and then refused)
    with pytest.raises(rf.RootfsError, match="SHA512"):
        rf.fetch_debs(ar.normalize_arch("host"), str(tmp_path), ("busybox",))
