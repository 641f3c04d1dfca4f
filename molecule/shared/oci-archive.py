#!/usr/bin/python3
"""Write a two-layer OCI image archive (`oci-archive:`: a tar of an OCI image layout) from a rootfs directory.

    oci-archive.py ROOTFS OUT.tar --ref localhost/NAME:TAG --arch amd64|arm64 [--file /PATH=TEXT ...] [--cmd JSON]

Layer 1 is ROOTFS (every member owned by 0:0, as root inside the container sees it), layer 2 holds the
--file entries. The config sets Env PATH, Cmd (/bin/sh, or --cmd's JSON array) and WorkingDir /; the index names the manifest with
`org.opencontainers.image.ref.name` (what `skopeo copy oci-archive:OUT.tar ...` and `podman load` read).
Standard library only, so that the molecule controller needs nothing more. Written to OUT.tar.tmp, then
renamed: a killed run leaves no half archive under the final name.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
EPOCH = 1700000000          # fixed mtime of the archive's own members and of the files added by --file


def as_root(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def layer_from_dir(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.relpath(path, root)
                info = tar.gettarinfo(path, arcname)
                if info is None:            # a socket: nothing an image can carry
                    continue
                as_root(info)
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def layer_from_files(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path, text in files:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = as_root(tarfile.TarInfo(d))
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                    tar.addfile(info)
            data = text.encode()
            info = as_root(tarfile.TarInfo("/".join(parts)))
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(rootfs, files, ref, arch, cmd=("/bin/sh",)):
    """Returns {blob path in the layout: bytes} for the whole OCI layout."""
    blobs = {}

    def blob(data):
        d = digest(data)
        blobs["blobs/sha256/" + d.split(":", 1)[1]] = data
        return d

    layers, diff_ids = [], []
    for raw in (layer_from_dir(rootfs), layer_from_files(files)):
        gz = gzip.compress(raw, mtime=0)
        layers.append({"mediaType": MT_LAYER, "digest": blob(gz), "size": len(gz)})
        diff_ids.append(digest(raw))
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"busybox rootfs {os.path.basename(os.path.abspath(rootfs))}"},
                    {"created_by": "oci-archive.py --file " + " ".join(p for p, _ in files)}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": blob(config), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{"mediaType": MT_MANIFEST, "digest": blob(manifest), "size": len(manifest),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }, sort_keys=True).encode()
    blobs["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    blobs["index.json"] = index
    return blobs


def write_archive(out, blobs):
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = as_root(tarfile.TarInfo(d))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for name in sorted(blobs, key=lambda n: (n.startswith("blobs/"), n)):
            info = as_root(tarfile.TarInfo(name))
            info.size, info.mode, info.mtime = len(blobs[name]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(blobs[name]))
    os.replace(tmp, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rootfs")
    ap.add_argument("out")
    ap.add_argument("--ref", required=True, help="name in the index, e.g. localhost/pirun-verify:latest")
    ap.add_argument("--arch", required=True, choices=["amd64", "arm64"])
    ap.add_argument("--file", action="append", default=[], metavar="/PATH=TEXT", help="a file of layer 2")
    ap.add_argument("--cmd", default='["/bin/sh"]', metavar="JSON", help='the image\'s Cmd, e.g. \'["httpd", "-f"]\'')
    args = ap.parse_args(argv)
    try:
        cmd = json.loads(args.cmd)
    except ValueError:
        cmd = None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
        print(f"oci-archive: error: --cmd {args.cmd!r}: expected a JSON array of strings", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.rootfs, "bin", "busybox")):
        print(f"oci-archive: error: {args.rootfs} is not a busybox rootfs (no bin/busybox); "
              "fix: run scripts/setup (it builds rootfs_host/ and rootfs_arm/)", file=sys.stderr)
        return 1
    files = []
    for spec in args.file:
        path, sep, text = spec.partition("=")
        if not sep or not path.startswith("/"):
            print(f"oci-archive: error: --file {spec!r}: expected /PATH=TEXT", file=sys.stderr)
            return 2
        files.append((path, text.replace("\\n", "\n")))
    blobs = build(args.rootfs, files, args.ref, args.arch, cmd)
    write_archive(args.out, blobs)
    print(f"{args.out}: {args.ref} ({args.arch}), {sum(len(b) for b in blobs.values())} bytes of blobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
