"""Fixtures and helpers of the image tests: test images built offline from the busybox rootfs, and running `pirun` as the test user.

`build_layout` writes an OCI image layout (gzip layers, a config, a manifest, index.json); `layer` makes one
layer tarball from (TarInfo, bytes) members. The standard test image (`test_image`) has three layers:
the busybox rootfs; a layer with a user `app` (1000:1000), files owned by 1000:1000, a setuid file, a hard
link, a symlink, an xattr, a whiteout and an opaque directory; and a small top layer. Its config sets Env,
Cmd, WorkingDir and User.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, ROOTFS, ROOTFS_ARM, check_rootfs, container_user, user_env, user_kwargs

PIRUN = REPO / "runtime" / "pirun"


def pirun(args, root, input=None, timeout=120, env=None, check=False, runroot=None):
    """Run `pirun --root ROOT ARGS` as the test user; CompletedProcess with text output."""
    argv = [str(PIRUN), "--root", str(root)]
    if runroot:
        argv += ["--runroot", str(runroot)]
    argv += [str(a) for a in args]
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=user_env(env),
                       cwd="/", **user_kwargs())
    if check and r.returncode != 0:
        raise AssertionError(f"pirun {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
    return r


def one_error_line(r):
    """The run failed with exit 125 and exactly one line `pirun: error: ...; fix: ...`, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 125, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("pirun: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def member(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, linkname="", xattrs=None,
           mtime=1700000000):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, ti.mtime = kind, mode, uid, gid, linkname, mtime
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return ti, data


def layer(members):
    """Uncompressed tar bytes of the members (PAX format, for xattrs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def tree_layer(rootfs, owner=(0, 0)):
    """A layer of a whole directory tree, every file owned by `owner` (as in a real base image)."""
    buf = io.BytesIO()

    def reset(ti):
        ti.uid, ti.gid = owner
        ti.uname = ti.gname = ""
        return ti
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(str(rootfs), arcname=".", filter=reset)
    return buf.getvalue()


def _blob(dest, data):
    d = hashlib.sha256(data).hexdigest()
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "blobs" / "sha256" / d).write_bytes(data)
    return f"sha256:{d}", len(data)


def add_image(dest, layers, config=None, arch="amd64", variant=None, compress=True):
    """Write blobs of one image into layout `dest`; returns the manifest descriptor (not yet indexed)."""
    diff_ids, descs = [], []
    for raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        data = gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw
        digest, size = _blob(dest, data)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else ""),
                      "digest": digest, "size": size})
    cfg = {"created": "2026-12-01T00:00:00Z", "architecture": arch, "os": "linux",
           "config": config or {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        cfg["variant"] = variant
    cdigest, csize = _blob(dest, json.dumps(cfg).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                           "size": csize}, "layers": descs}
    mdigest, msize = _blob(dest, json.dumps(manifest).encode())
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
            "platform": {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}}
    return desc, cdigest


def write_index(dest, manifests, tag=None):
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if tag:
        manifests = [dict(m, annotations={"org.opencontainers.image.ref.name": tag}) for m in manifests]
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def nested_index(dest, manifests, tag=None):
    """index.json -> one image index (multi-platform) -> manifests, as skopeo copy --all writes."""
    idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    digest, size = _blob(dest, json.dumps(idx).encode())
    write_index(dest, [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
                        "size": size}], tag)


TEST_CONFIG = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
               "Cmd": ["/bin/sh", "-c", "echo $GREETING from $(pwd) as $(id -u):$(id -g)"],
               "WorkingDir": "/home/app", "User": "app", "StopSignal": "SIGINT"}


def base_extras():
    """Members added to the busybox tree in layer 1 (what layer 2 deletes or hides)."""
    return [member("etc/motd", data=b"deleted by a whiteout\n"),
            member("opq", tarfile.DIRTYPE, mode=0o755), member("opq/old1", data=b"1"), member("opq/old2", data=b"2")]


def app_layer(rootfs):
    passwd = (rootfs / "etc" / "passwd").read_bytes() + b"app:x:1000:1000:app:/home/app:/bin/sh\n"
    group = (rootfs / "etc" / "group").read_bytes() + b"app:x:1000:\n"
    return layer([
        member("etc/passwd", data=passwd), member("etc/group", data=group),
        member("home/app", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000),
        member("home/app/notes", data=b"mine\n", uid=1000, gid=1000, mode=0o600),
        member("bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
        member("data", tarfile.DIRTYPE, mode=0o755),
        member("data/a", data=b"linked\n", xattrs={"user.pirun": "kept"}),
        member("data/b", tarfile.LNKTYPE, linkname="data/a"),
        member("data/link", tarfile.SYMTYPE, linkname="a"),
        member("dev/null-like", tarfile.CHRTYPE, mode=0o666),
        member("etc/.wh.motd"),
        member("opq", tarfile.DIRTYPE, mode=0o755), member("opq/.wh..wh..opq"), member("opq/new", data=b"n"),
    ])


def base_layer(rootfs):
    """The busybox tree plus base_extras, as one layer."""
    raw = tree_layer(rootfs)
    # append the extras: re-open the tar, add members
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=buf, mode="w",
                                                                     format=tarfile.PAX_FORMAT) as dst:
        for ti in src:
            dst.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
        for ti, data in base_extras():
            dst.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def build_test_image(dest, rootfs, tag="test:1", arch="amd64"):
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    top = layer([member("etc/top", data=b"top layer\n")])
    desc, cdigest = add_image(dest, [base_layer(rootfs), app_layer(rootfs), top], TEST_CONFIG, arch=arch)
    write_index(dest, [desc], tag)
    return cdigest


def chown_tree(path):
    """Hand a directory the tests built (as root) to the test user."""
    _n, uid, gid, _h = container_user()
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)
    os.chown(path, uid, gid)


def wait_port(port, timeout=10.0):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


# --- fixtures (imported by the test modules) ---------------------------------------------------------


def _user_dir(prefix):
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    _n, uid, gid, _h = container_user()
    os.chown(d, uid, gid)
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def image_dir():
    """A directory for the session's test images (readable by the test user)."""
    d = _user_dir("pirun-images-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def test_layout(image_dir):
    """OCI layout of the standard test image (tag test:1), built from rootfs_host."""
    check_rootfs(ROOTFS, "the host-architecture test rootfs")
    path = image_dir / "test-layout"
    build_test_image(path, ROOTFS)
    chown_tree(path)
    return path


@pytest.fixture(scope="session")
def rootfs_arm_checked():
    return check_rootfs(ROOTFS_ARM, "the arm64 rootfs")


@pytest.fixture
def root():
    """A fresh, empty image store (--root) owned by the test user; its debris is removed afterwards."""
    d = _user_dir("pirun-store-")
    yield d / "store"
    if (d / "store").exists():
        pirun(["image", "prune", "-a"], d / "store")      # subuid-owned files: removed in a user namespace
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loaded(root, test_layout):
    """A store with the test image loaded as localhost/test:1."""
    r = pirun(["load", "-i", test_layout], root)
    assert r.returncode == 0, r.stderr
    return root


# --- a local registry (Debian's docker-registry) ----------------------------------------------------------
from net_helpers import free_port  # noqa: E402,F401  (one way to pick a free loopback port; test_registry uses it)


class Registry:
    """docker-registry serving on 127.0.0.1:PORT from a temporary directory; with tls=True a certificate made
    here (openssl) and htpasswd users (bcrypt, from Python's crypt: libxcrypt's $2b$)."""

    def __init__(self, base, tls=False, users=None):
        import subprocess as sp
        self.base = Path(base)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.storage = self.base / "storage"
        self.storage.mkdir(parents=True)
        lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
                 "  filesystem:", f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.host}"]
        if tls:
            self.certs = self.base / "certs"
            self.certs.mkdir()
            r = sp.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(self.certs / "key.pem"), "-out", str(self.certs / "ca.crt"),
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
            assert r.returncode == 0, r.stderr
            lines += ["  tls:", f"    certificate: {self.certs / 'ca.crt'}", f"    key: {self.certs / 'key.pem'}"]
        if users:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            htpasswd = self.base / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{crypt.crypt(p, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
                                        for u, p in users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: pirun-test", f"    path: {htpasswd}"]
        (self.base / "config.yml").write_text("\n".join(lines) + "\n")
        if not os.path.exists("/usr/bin/docker-registry"):
            from conftest import missing
            missing("docker-registry (Debian package docker-registry)", "apt-get install docker-registry")
        self.proc = sp.Popen(["/usr/bin/docker-registry", "serve", str(self.base / "config.yml")],
                             stdout=sp.DEVNULL, stderr=sp.PIPE)
        wait_port(self.port)
        if tls:
            chown_tree(self.certs)

    def push(self, src, name, creds=None, all_platforms=False):
        """skopeo copy SRC (e.g. oci:DIR:TAG) docker://HOST/NAME."""
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if creds:
            argv.append(f"--dest-creds={creds}")
        if all_platforms:
            argv.append("--all")
        r = subprocess.run(argv + [src, f"docker://{self.host}/{name}"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr

    def blobs(self):
        return sorted((self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256").glob("*/*/data"),
                      key=lambda p: p.stat().st_size)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def registry(test_layout):
    """A plain-HTTP registry with test:1 pushed."""
    base = _user_dir("pirun-registry-")
    reg = Registry(base)
    reg.push(f"oci:{test_layout}:test:1", "test:1")
    yield reg
    reg.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_registry(test_layout):
    """A TLS registry with htpasswd users (lab:secret), test:1 pushed."""
    base = _user_dir("pirun-registry-tls-")
    reg = Registry(base, tls=True, users={"lab": "secret"})
    reg.push(f"oci:{test_layout}:test:1", "test:1", creds="lab:secret")
    yield reg
    reg.stop()
    shutil.rmtree(base, ignore_errors=True)
