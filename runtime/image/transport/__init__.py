"""Transports, named as skopeo names them: docker:// (a registry, through skopeo), oci: (an OCI layout
directory), oci-archive: (a tarball of one), docker-archive: (`docker save` / `podman save`).

Each transport is a `Source` that yields images: a manifest digest, the config's bytes and the layer blobs as
(path, offset, length) slices of files on disk, so the unpacker reads them where they lie. `commit` puts an
image into the store; the store never knows where it came from.
"""
import json
import os

from runtime.errors import SpecError

MEDIA_INDEX = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MEDIA_MANIFEST = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


class TransportError(SpecError):
    """The source is not an image, or the image cannot be read from it."""


class Image:
    """One image as a transport yields it."""
    __slots__ = ("names", "manifest_digest", "config", "config_digest", "blobs")

    def __init__(self, names, manifest_digest, config, config_digest, blobs):
        self.names = names                      # names to give it (normalised references)
        self.manifest_digest = manifest_digest  # or "" (docker-archive has none)
        self.config = config                    # bytes
        self.config_digest = config_digest      # "sha256:..." as the manifest says, or None
        self.blobs = blobs                      # [((path, offset, length), blob digest or None)]


def sha256(data):
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_json(data, what):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TransportError(f"{what} is not valid JSON", fix="the file is corrupted or not an image") from None


def choose(index, platform, what):
    """The manifest descriptor of `platform` in an image index; a one-line error names those it has."""
    entries = [m for m in index.get("manifests", []) if m.get("mediaType") in MEDIA_MANIFEST or
               "platform" in m]
    from runtime.image import ref
    for m in entries:
        if platform.matches(m.get("platform") or {}):
            return m
    have = ", ".join(ref.platform_of(m["platform"]) for m in entries if m.get("platform")) or "none"
    raise TransportError(f"{what} has no image for {platform} (it has: {have})",
                         fix="choose one of those with --platform OS/ARCH[/VARIANT]")


def commit(ctx, image, platform_text=None, warn=None):
    """Store one image: unpack the layers the store lacks (in a user namespace), then write its record.
    Returns the record."""
    from runtime.image import store as store_mod, unpack, userns
    store = store_mod.Store(ctx.root, ctx.runroot).open()
    config = load_json(image.config, "the image config")
    if image.config_digest and sha256(image.config) != image.config_digest:
        raise TransportError(f"config {image.config_digest}: digest mismatch",
                             fix="the file is corrupted: pull or save the image again")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(image.blobs):
        raise TransportError("the image config's rootfs.diff_ids do not match the manifest's layers",
                             fix="the image is broken: build or save it again")
    for d in diff_ids:
        if not (isinstance(d, str) and d.startswith("sha256:") and len(d) == 71):
            raise TransportError(f"the image config names a layer {d!r} that is not a sha256 digest")
    lock = store.shared()
    try:
        jobs = [(blob, digest, diff_id) for (blob, digest), diff_id in zip(image.blobs, diff_ids)
                if not store.has_layer(diff_id)]
        devices = 0
        if jobs:
            import pwd
            try:
                user = pwd.getpwuid(os.getuid()).pw_name
            except KeyError:
                user = str(os.getuid())
            try:
                out = userns.run(unpack.unpack_all, store.layers, jobs, user)
            except OSError as e:
                raise _store_error(ctx, e) from None
            except SpecError:
                raise
            except Exception as e:
                if "No space left" in str(e) or "Disk quota" in str(e):
                    raise store_mod.StoreError(f"unpack: {e}", fix=_space_fix(ctx)) from None
                raise
            devices = sum(int(line.split()[2]) for line in out.splitlines() if line)
        if devices and warn:
            warn(f"{devices} device node(s) in the image were skipped: device nodes cannot be created rootless")
        image_id = image.config_digest or sha256(image.config)
        from runtime.image import ref
        record = {
            "id": image_id.split(":", 1)[1],
            "digest": image.manifest_digest,
            "layers": diff_ids,
            "config": config,
            "created": config.get("created") or store_mod.now(),
            "stored": store_mod.now(),
            "platform": ref.platform_of({"os": config.get("os", "linux"),
                                         "architecture": config.get("architecture", "?"),
                                         "variant": config.get("variant", "")}),
            "size": sum(store.layer_size(d) for d in diff_ids),
        }
        try:
            return store.add_image(record, image.names)
        except OSError as e:
            raise _store_error(ctx, e) from None
    finally:
        os.close(lock)


def _space_fix(ctx):
    return f"free space under {ctx.root} or choose another store with --root"


def _store_error(ctx, e):
    from runtime.image.store import StoreError
    return StoreError(f"image store {ctx.root}: {e.strerror}", fix=_space_fix(ctx))


def open_source(text, ctx, opts=None):
    """A `Source` for a transport-qualified name: oci:DIR[:TAG], oci-archive:FILE[:TAG],
    docker-archive:FILE, docker://REF; a plain path is detected (OCI layout dir, OCI or docker archive)."""
    for prefix, module in (("oci:", "oci"), ("oci-archive:", "oci_archive"), ("docker-archive:", "docker_archive"),
                           ("docker://", "docker")):
        if text.startswith(prefix):
            import importlib
            return importlib.import_module(f"runtime.image.transport.{module}").open_source(
                text[len(prefix):], ctx, opts)
    return detect(text, ctx)


def detect(path, ctx):
    from runtime.image.transport import docker_archive, oci, oci_archive
    if os.path.isdir(path):
        if os.path.exists(f"{path}/oci-layout") or os.path.exists(f"{path}/index.json"):
            return oci.open_source(path, ctx)
        raise TransportError(f"{path} is not an image: a directory without oci-layout and index.json",
                             fix="give an OCI layout directory, an oci-archive or a docker-archive")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise TransportError(f"{path}: {e.strerror}") from None
    os.close(fd)
    import tarfile
    try:
        with tarfile.open(path, "r:") as tf:
            names = set(tf.getnames())
    except (tarfile.TarError, OSError, EOFError):
        names = None
    if names is None:
        try:
            with tarfile.open(path, "r:*") as tf:
                names = set(tf.getnames())
        except (tarfile.TarError, OSError, EOFError):
            raise TransportError(f"{path} is not an image: not a tar archive",
                                 fix="give an OCI layout directory, an oci-archive or a docker-archive "
                                     "(podman save / docker save)") from None
    names = {n[2:] if n.startswith("./") else n for n in names}
    if "manifest.json" in names:
        return docker_archive.open_source(path, ctx)
    if "index.json" in names and ("oci-layout" in names or any(n.startswith("blobs/") for n in names)):
        return oci_archive.open_source(path, ctx)
    raise TransportError(f"{path} is not an image: the archive has neither manifest.json (docker-archive) nor "
                         f"index.json (oci-archive)", fix="give an archive made by podman save, docker save or "
                         "skopeo copy; a root filesystem tarball is for pirun import")
