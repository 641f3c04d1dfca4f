"""pirun run IMAGE: the image's config, its files as the image has them, a writable layer per container."""
import os
import subprocess

from conftest import ROOTFS, container_user
from image_helpers import PIRUN, chown_tree, loaded, one_error_line, pirun, root, test_layout, image_dir  # noqa: F401

RUN = ["run", "--pull=never", "--net", "none"]


def layers(root):
    """The store's unpacked layers."""
    return sorted(p for p in (root / "layers").iterdir() if len(p.name) == 64 and p.is_dir())


def test_config_applied(loaded):
    r = pirun(RUN + ["test:1"], loaded)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from /home/app as 1000:1000\n"


def test_user_options_win(loaded):
    r = pirun(RUN + ["-u", "0", "-w", "/tmp", "-e", "GREETING=bye", "test:1", "sh", "-c",
                     "echo $GREETING $(pwd) $(id -u) $HOME"], loaded)
    assert r.stdout == "bye /tmp 0 /root\n", r.stderr
    r = pirun(RUN + ["--entrypoint", "/bin/echo", "test:1", "a", "b"], loaded)
    assert r.stdout == "a b\n", r.stderr
    r = pirun(RUN + ["-u", "app:0", "test:1", "sh", "-c", "id -u; id -g; echo $HOME"], loaded)
    assert r.stdout == "1000\n0\n/home/app\n", r.stderr


def test_unknown_user_is_one_line(loaded):
    line = one_error_line(pirun(RUN + ["-u", "nobody-here", "test:1", "true"], loaded))
    assert "no such user in the image's /etc/passwd" in line


def test_files_as_the_image_has_them(loaded):
    script = ("stat -c '%u:%g %a' /home/app/notes /home/app /bin/suid; "
              "[ $(stat -c %i /data/a) = $(stat -c %i /data/b) ] && echo hardlink; readlink /data/link; "
              "cat /etc/top; ls /opq; [ -e /etc/motd ] || echo motd-gone; ls /dev/null-like 2>&1 | wc -l")
    r = pirun(RUN + ["-u", "0", "test:1", "sh", "-c", script], loaded)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1000:1000 600", "1000:1000 755", "0:0 4755", "hardlink", "a",
                                     "top layer", "new", "motd-gone", "1"]
    # the xattr is kept on disk (busybox has no getfattr)
    found = [p / "diff" / "data" / "a" for p in layers(loaded) if (p / "diff" / "data" / "a").exists()]
    assert found and os.getxattr(found[0], "user.pirun") == b"kept"


def test_device_nodes_skipped_with_one_notice(root, test_layout):
    r = pirun(["load", "-i", test_layout], root)
    assert r.returncode == 0
    notices = [line for line in r.stderr.splitlines() if "device node" in line]
    assert len(notices) == 1 and "skipped" in notices[0]


def test_owner_on_disk_is_a_subordinate_id(loaded):
    _n, uid, _g, _h = container_user()
    with open("/etc/subuid") as f:
        start = next(int(line.split(":")[1]) for line in f if line.split(":")[0] == _n)
    notes = next(p / "diff" / "home" / "app" / "notes" for p in layers(loaded)
                 if (p / "diff" / "home" / "app" / "notes").exists())
    assert os.lstat(notes).st_uid == start + 999          # 1000 inside: the 1000th subordinate ID
    top = next(p / "diff" / "etc" / "top" for p in layers(loaded) if (p / "diff" / "etc" / "top").exists())
    assert os.lstat(top).st_uid == uid                   # 0 inside: the user


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in (w for layer in layers(root) for w in os.walk(layer)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    assert out
    return out


def test_writes_stay_in_the_container(loaded):
    before = snapshot(loaded)
    r = pirun(RUN + ["-u", "0", "test:1", "sh", "-c",
                     "echo x > /root/x; rm /etc/top; rm -r /opq; chown 1000 /bin/suid; ls /root"], loaded)
    assert r.returncode == 0 and r.stdout == "x\n", r.stderr
    r = pirun(RUN + ["-u", "0", "test:1", "sh", "-c", "ls /root; cat /etc/top; ls /opq"], loaded)
    assert r.stdout == "top layer\nnew\n", r.stderr
    assert snapshot(loaded) == before                      # the image's files never change
    assert list((loaded / "containers").iterdir()) == []   # the writable layers are gone


def test_two_containers_do_not_see_each_other(loaded):
    a = subprocess.Popen([str(PIRUN), "--root", str(loaded)] + RUN + ["-u", "0", "test:1", "sh", "-c",
                         "echo a > /shared; sleep 1; cat /shared"], stdout=subprocess.PIPE, text=True,
                         **_kw())
    b = pirun(RUN + ["-u", "0", "test:1", "sh", "-c", "sleep 0.3; cat /shared 2>&1; echo b > /shared; cat /shared"],
              loaded)
    out, _ = a.communicate(timeout=30)
    assert out == "a\n"
    assert b.stdout.endswith("b\n") and "a\n" not in b.stdout


def _kw():
    from conftest import user_env, user_kwargs
    return dict(env=user_env(), cwd="/", **user_kwargs())


def test_volume_target_created_in_the_writable_layer(loaded, shared_tmp):
    (shared_tmp / "f").write_text("from host\n")
    r = pirun(RUN + ["-v", f"{shared_tmp}:/new/dir", "test:1", "cat", "/new/dir/f"], loaded)
    assert r.returncode == 0 and r.stdout == "from host\n", r.stderr
    assert not any((p / "diff" / "new").exists() for p in layers(loaded))


def test_read_only_has_no_writable_layer(loaded):
    r = pirun(RUN + ["--read-only", "-u", "0", "test:1", "sh", "-c", "touch /x 2>&1; cat /etc/top"], loaded)
    assert "Read-only file system" in r.stdout and "top layer" in r.stdout, r.stderr
    assert list((loaded / "containers").iterdir()) == []   # its layer (no upper, no work) is gone too


def test_rootfs_overlay_keeps_the_directory_pristine(root, shared_tmp):
    import shutil
    rootfs = shared_tmp / "rootfs"
    shutil.copytree(ROOTFS, rootfs, symlinks=True)
    chown_tree(rootfs)
    before = sorted(os.listdir(rootfs / "root")) if (rootfs / "root").exists() else None
    r = pirun(["run", "--net", "none", "--rootfs", f"{rootfs}:O", "sh", "-c", "mkdir -p /root; echo x > /root/x; "
               "cat /root/x"], root)
    assert r.returncode == 0 and r.stdout == "x\n", r.stderr
    after = sorted(os.listdir(rootfs / "root")) if (rootfs / "root").exists() else None
    assert after == before
    # without :O, pirun run --rootfs is run.py: the directory itself is written
    r = pirun(["run", "--net", "none", "--rootfs", str(rootfs), "sh", "-c", "echo y > /y"], root)
    assert r.returncode == 0 and (rootfs / "y").exists()


def test_unknown_image_is_one_line(root):
    line = one_error_line(pirun(RUN + ["nosuch:1", "true"], root))
    assert "nosuch:1 is not in the store" in line and "fix: pirun pull" in line


def test_fuse_overlayfs_driver(loaded):
    """The fallback driver, forced: fuse-overlayfs runs the image (scripts/setup and the pirun_prereqs role make
    /dev/fuse usable, as udev does on Debian), and the container's layer goes when it ends."""
    import pwd
    from conftest import TEST_USER, missing
    uid = pwd.getpwnam(TEST_USER).pw_uid if os.getuid() == 0 else os.getuid()
    st = os.stat("/dev/fuse")
    if not (st.st_mode & 0o006 == 0o006 or (st.st_uid == uid and st.st_mode & 0o600 == 0o600)):
        missing(f"/dev/fuse usable by {TEST_USER}", "chmod 0666 /dev/fuse (scripts/setup)")
    r = pirun(RUN + ["test:1", "sh", "-c", "cat /etc/top; grep ' / ' /proc/mounts | cut -d' ' -f3"], loaded,
              env={"PIRUN_OVERLAY_DRIVER": "fuse-overlayfs"})
    assert r.returncode == 0 and r.stdout == "top layer\nfuse.fuse-overlayfs\n", r.stderr
    assert list((loaded / "containers").iterdir()) == []


def test_unknown_driver_is_one_line(loaded):
    line = one_error_line(pirun(RUN + ["test:1", "true"], loaded, env={"PIRUN_OVERLAY_DRIVER": "aufs"}))
    assert "unknown driver" in line


PROBE_WITH_A_CLEAN_INSIDE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from runtime.image import userns
from runtime.image.overlay import native
from runtime.image.store import Store
real = userns.run

def run_after_a_clean(fn, *args, **kw):     # another pirun command cleaning the store in the probe's window
    Store(sys.argv[2]).clean(wait=False)
    return real(fn, *args, **kw)

userns.run = run_after_a_clean
print(native.probe(sys.argv[2]))
"""


def test_driver_probe_survives_a_command_cleaning_the_store(root):
    """The overlay driver is probed in a scratch directory of the store (the first run of a store); another
    pirun command removing the store's debris meanwhile must leave it: the probe holds the store's lock."""
    from conftest import REPO, user_env, user_kwargs
    pirun(["images"], root)                         # creates the store
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", PROBE_WITH_A_CLEAN_INSIDE, str(REPO), str(root)],
                       capture_output=True, text=True, timeout=60, env=user_env(), cwd="/", **user_kwargs())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "None\n", r.stdout           # native overlayfs works here: no problem found
    assert os.listdir(root / "tmp") == []
