"""pirun load / pirun import: docker-archive (podman save), oci-archive, OCI layout directories, rootfs
tarballs; bad input is one line, exit 125, and nothing is stored."""
import json
import os
import subprocess
import tarfile

import pytest

from conftest import ROOTFS, missing, user_env, user_kwargs
from image_helpers import (chown_tree, image_dir, loaded, one_error_line, pirun, root, test_layout,  # noqa: F401
                           _user_dir)

RUN = ["run", "--pull=never", "--net", "none"]


def stored(root):
    """What the store holds: image records and layer directories."""
    recs = json.loads((root / "images.json").read_text())["images"] if (root / "images.json").exists() else []
    layers = [p.name for p in (root / "layers").iterdir()] if (root / "layers").exists() else []
    return recs, layers


@pytest.fixture(scope="module")
def podman_archives():
    """docker-archive and oci-archive of a rootfs imported by Debian's podman (rootless, its own storage in a
    temporary HOME), as a lab would make them."""
    if not os.path.exists("/usr/bin/podman"):
        missing("podman (Debian package podman)", "apt-get install podman (scripts/apt-packages.txt)")
    d = _user_dir("pirun-podman-")
    with tarfile.open(d / "rootfs.tar", "w") as tf:
        tf.add(str(ROOTFS), arcname=".")
    chown_tree(d)
    pm = ["podman", "--root", f"{d}/storage", "--runroot", f"{d}/run", "--storage-driver", "vfs",
          "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    env = user_env({"HOME": str(d), "XDG_RUNTIME_DIR": f"{d}/run"})
    os.makedirs(d / "run", exist_ok=True)
    chown_tree(d)
    for args in (["import", "--change", 'CMD ["/bin/echo", "made by podman"]', f"{d}/rootfs.tar",
                  "localhost/pm:1"],
                 ["save", "-o", f"{d}/pm-docker.tar", "localhost/pm:1"],
                 ["save", "--format", "oci-archive", "-o", f"{d}/pm-oci.tar", "localhost/pm:1"]):
        r = subprocess.run(pm + args, capture_output=True, text=True, env=env, cwd=str(d), timeout=120,
                           **user_kwargs())
        assert r.returncode == 0, f"podman {args[0]}: {r.stderr}"
    yield d
    subprocess.run(pm + ["system", "reset", "-f"], capture_output=True, env=env, cwd=str(d), **user_kwargs())
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_load_podman_save_docker_archive(root, podman_archives):
    r = pirun(["load", "-i", podman_archives / "pm-docker.tar"], root)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Loaded image: localhost/pm:1\n"
    r = pirun(RUN + ["localhost/pm:1"], root)
    assert r.returncode == 0 and r.stdout == "made by podman\n", r.stderr
    assert "localhost/pm" in pirun(["images"], root).stdout


def test_load_podman_save_oci_archive(root, podman_archives):
    r = pirun(["load", "-i", podman_archives / "pm-oci.tar"], root)
    assert r.returncode == 0, r.stderr
    r = pirun(RUN + ["pm:1"], root)
    assert r.returncode == 0 and r.stdout == "made by podman\n", r.stderr


def test_load_from_stdin_and_transport_names(root, podman_archives, test_layout):
    with open(podman_archives / "pm-docker.tar", "rb") as f:
        r = subprocess.run([str(__import__("image_helpers").PIRUN), "--root", str(root), "load"], stdin=f,
                           capture_output=True, text=True, env=user_env(), cwd="/", **user_kwargs())
    assert r.returncode == 0, r.stderr
    r = pirun(["load", "-i", f"oci:{test_layout}:test:1"], root)
    assert r.returncode == 0 and r.stdout == "Loaded image: localhost/test:1\n", r.stderr


def test_oci_archive_of_our_layout(root, test_layout, shared_tmp):
    arch = shared_tmp / "test-oci.tar"
    with tarfile.open(arch, "w") as tf:
        tf.add(str(test_layout), arcname=".")
    chown_tree(shared_tmp)
    r = pirun(["load", "-i", arch], root)
    assert r.returncode == 0, r.stderr
    assert pirun(RUN + ["test:1"], root).stdout == "hello from /home/app as 1000:1000\n"


def test_import_rootfs_tarball(root, podman_archives):
    r = pirun(["import", "--change", 'CMD ["/bin/echo", "imported"]', podman_archives / "rootfs.tar",
               "lab/base:2"], root)
    assert r.returncode == 0 and r.stdout.startswith("sha256:"), r.stderr
    r = pirun(RUN + ["lab/base:2"], root)
    assert r.returncode == 0 and r.stdout == "imported\n", r.stderr


def test_layers_are_shared(loaded, test_layout):
    """The same layers loaded again (and by a second image) are stored once."""
    before = stored(loaded)[1]
    r = pirun(["load", "-i", test_layout], loaded)
    assert r.returncode == 0
    assert stored(loaded)[1] == before


@pytest.mark.parametrize("what", ["text", "empty-dir", "plain-tar", "truncated"])
def test_not_an_image(root, shared_tmp, what, test_layout):
    if what == "text":
        bad = shared_tmp / "notes.txt"
        bad.write_text("hello\n")
    elif what == "empty-dir":
        bad = shared_tmp / "empty"
        bad.mkdir()
    elif what == "plain-tar":
        bad = shared_tmp / "rootfs.tar"
        with tarfile.open(bad, "w") as tf:
            tf.add(str(ROOTFS / "etc"), arcname="etc")
    else:
        bad = shared_tmp / "cut.tar"
        with tarfile.open(bad, "w") as tf:
            tf.add(str(test_layout), arcname=".")
        data = bad.read_bytes()
        bad.write_bytes(data[:len(data) // 3])
    chown_tree(shared_tmp)
    line = one_error_line(pirun(["load", "-i", bad], root))
    assert "fix:" in line
    recs, layers = stored(root)
    assert recs == [] and [n for n in layers if not n.endswith(".lock")] == []


def test_corrupted_blob_is_refused(root, test_layout, shared_tmp):
    import shutil
    bad = shared_tmp / "bad-layout"
    shutil.copytree(test_layout, bad)
    # flip one byte in the middle of the biggest blob (the base layer)
    blob = max((bad / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    chown_tree(shared_tmp)
    line = one_error_line(pirun(["load", "-i", bad], root))
    assert "digest mismatch" in line or "corrupted" in line, line
    recs, layers = stored(root)
    assert recs == []
    assert not [n for n in layers if not n.endswith(".lock")]     # no layer, no temporary directory
