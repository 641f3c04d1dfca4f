"""The container's filesystem: pivot_root into the rootfs, fresh /proc, tmpfs /dev, read-only /sys, masked and
read-only /proc paths, generated /etc files (the rootfs on disk is never edited), volumes, --read-only."""
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import container_user, run, user_env, user_kwargs
from runtime.steps import MASKED_PATHS, READONLY_PATHS


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + sorted(dirnames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{p} {st.st_mode} {st.st_size} {st.st_mtime_ns} {st.st_uid}".encode())
    return h.hexdigest()


def test_root_is_the_rootfs_and_old_root_is_gone(rootfs):
    r = run(["/bin/sh", "-c", "cat /proc/self/mountinfo; ls /"])
    assert r.returncode == 0, r.stderr
    mounts = [line.split()[4] for line in r.stdout.splitlines() if line[:1].isdigit() and " - " in line]
    assert mounts[0] == "/"
    assert not any(m.startswith(("/work", "/home", "/root", "/usr/lib")) for m in mounts), mounts
    assert "runtime" not in r.stdout.split()


def test_host_files_are_unreachable(rootfs):
    with tempfile.NamedTemporaryFile(prefix="pirun-host-marker-", dir="/tmp") as f:
        os.chmod(f.name, 0o644)
        name = os.path.basename(f.name)
        r = run(["/bin/sh", "-c", f"find / -xdev -name '{name}' 2>/dev/null; find /tmp /root /dev /run -name '{name}'; "
                 f"cat /proc/1/root/tmp/{name} 2>&1; echo done"])
    assert r.returncode == 0
    assert name not in r.stdout.replace(f"cat: can't open '/proc/1/root/tmp/{name}'", "")
    assert r.stdout.strip().endswith("done")


def test_dev_has_the_standard_nodes_only(rootfs):
    r = run(["/bin/sh", "-c", "ls -A /dev; echo x > /dev/null && head -c 4 /dev/zero | od -An -tx1; "
             "readlink /dev/ptmx; readlink /dev/fd"])
    assert r.returncode == 0, r.stderr
    names = set(r.stdout.split())
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd",
                "stdin", "stdout", "stderr"):
        assert dev in names, dev
    assert "sda" not in names and "kmsg" not in names and "mem" not in names
    assert "00 00 00 00" in r.stdout
    assert "pts/ptmx" in r.stdout and "/proc/self/fd" in r.stdout


def test_masked_paths_are_empty(rootfs):
    files = [p for p in MASKED_PATHS if os.path.isfile(p)]       # those this host's kernel has
    assert "/proc/keys" in files
    r = run(["/bin/sh", "-c", "for f in " + " ".join(files) + "; do echo \"$f $(cat $f | wc -c)\"; done;"
             " ls -A /sys/firmware | wc -l"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(files) + 1
    for line in lines[:-1]:
        path, size = line.split()
        assert size == "0", f"{path} is readable: {size} bytes"
    assert lines[-1] == "0"
    with open("/proc/keys") as f:
        assert f.read(), "the host's /proc/keys is empty: the test proves nothing"


# Sysctls of the container's own network namespace: with CAP_NET_ADMIN in the owning user namespace they are
# writable where /proc/sys is writable (the control below shows it here), so with --cap-add NET_ADMIN only the
# read-only mount can deny them. (Without NET_ADMIN they are EACCES anyway; kernel/hostname, vm/*, fs/* belong
# to the host's root: EACCES on any /proc in a user namespace, so they cannot show read-only-ness.)
NETNS_SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/core/somaxconn",
                 "/proc/sys/net/ipv4/ping_group_range")


@pytest.mark.parametrize("path", NETNS_SYSCTLS)
def test_read_only_proc_sys_denies_what_the_namespace_root_may_write(rootfs, path):
    value = "0 0" if path.endswith("ping_group_range") else "1"
    write = f"echo {value} > {path} && echo WRITTEN"
    control = subprocess.run(["unshare", "-Urn", "sh", "-c", write], capture_output=True, text=True,
                             timeout=30, env=user_env(), **user_kwargs())
    assert control.stdout == "WRITTEN\n", f"the control cannot write {path}: {control.stderr}"
    r = run(["--cap-add", "NET_ADMIN", "/bin/sh", "-c", write])
    assert "WRITTEN" not in r.stdout
    assert r.returncode != 0
    assert "Read-only file system" in r.stderr, r.stderr


def test_proc_and_sys_mount_flags(rootfs):
    r = run(["cat", "/proc/self/mountinfo"])
    table = {line.split()[4]: line for line in r.stdout.splitlines()}
    for p in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/sys"):
        if p in table:
            assert " ro," in table[p] or " ro " in table[p], table[p]
    assert "/sys" in table
    for p in READONLY_PATHS:
        if os.path.exists(p):                        # those this host's kernel has
            assert p in table and " ro," in table[p], p


def test_generated_etc_files_and_rootfs_untouched(rootfs):
    before = _tree_digest(rootfs)
    r = run(["--hostname", "box1", "/bin/sh", "-c", "cat /etc/hostname /etc/hosts /etc/resolv.conf; "
             "echo '10.9.9.9 added' >> /etc/hosts; grep -c added /etc/hosts"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("box1\n")
    assert "127.0.0.1\tlocalhost" in r.stdout and "box1" in r.stdout.split("\n", 1)[1]
    assert _tree_digest(rootfs) == before, "running a container changed the rootfs on disk"
    assert (Path(rootfs) / "etc" / "hosts").read_text() == ""


def test_volume_read_write_and_read_only(rootfs, shared_tmp):
    _name, uid, gid, _home = container_user()
    vol = shared_tmp / "vol"
    vol.mkdir()
    os.chown(vol, uid, gid)
    (vol / "in.txt").write_text("from host\n")
    r = run(["-v", f"{vol}:/mnt", "/bin/sh", "-c", "cat /mnt/in.txt; echo from container > /mnt/out.txt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from host\n"
    assert (vol / "out.txt").read_text() == "from container\n"
    r = run(["-v", f"{vol}:/mnt:ro", "/bin/sh", "-c", "cat /mnt/in.txt; echo x > /mnt/new.txt"])
    assert r.stdout == "from host\n"
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not (vol / "new.txt").exists()


def test_volume_target_must_exist(rootfs, shared_tmp):
    r = run(["-v", f"{shared_tmp}:/no/such/target", "true"])
    assert r.returncode == 125
    assert r.stderr.startswith("run.py: error: volume") and "/no/such/target" in r.stderr


def test_read_only_rootfs(rootfs):
    r = run(["--read-only", "/bin/sh", "-c", "touch /etc/x; touch /tmp/y; echo ok > /dev/shm/z && cat /dev/shm/z"])
    assert "Read-only file system" in r.stderr
    assert "ok" in r.stdout
    assert not (Path(rootfs) / "etc" / "x").exists()


def test_sys_is_read_only_and_has_no_host_cgroups(rootfs):
    r = run(["/bin/sh", "-c", "touch /sys/x 2>&1; ls /sys"])
    assert "Read-only file system" in r.stdout


def test_dangling_resolv_conf_symlink_is_mounted_over(rootfs, shared_tmp):
    """Debian images link /etc/resolv.conf to ../run/systemd/resolve/stub-resolv.conf, absent in a container:
    the generated file is mounted over the link itself; the rootfs keeps its link."""
    import shutil
    import subprocess
    copy = shared_tmp / "rootfs"
    subprocess.run(["cp", "-a", str(rootfs), str(copy)], check=True)
    resolv = copy / "etc" / "resolv.conf"
    resolv.unlink()
    os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)
    _name, uid, gid, _home = container_user()
    os.lchown(resolv, uid, gid)
    r = run(["/bin/sh", "-c", "cat /etc/resolv.conf; echo end"], rootfs=copy, net="none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("end\n")
    assert os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"
    assert not (copy / "run" / "systemd").exists()
    shutil.rmtree(copy)
