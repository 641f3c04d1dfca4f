"""oci-archive:FILE[:TAG]: a tarball of an OCI image layout (skopeo copy ... oci-archive:, buildah push).

Blobs are read in place from the archive (offset and size of each member); a compressed archive is first
decompressed into the store's scratch directory.
"""
import os

from runtime.image.transport import TransportError
from runtime.image.transport.oci import Layout, Source


class ArchiveLayout(Layout):
    def __init__(self, path, where=None):
        super().__init__(where or path)
        self.path = path
        import tarfile
        try:
            links = []
            with tarfile.open(path, "r:") as tf:
                self.members = {}
                for ti in tf:
                    name = _clean(ti.name)
                    if ti.isreg():
                        self.members[name] = (ti.offset_data, ti.size)
                    elif ti.islnk():
                        links.append((name, _clean(ti.linkname)))
                    elif ti.issym():          # podman save: <id>/layer.tar -> ../<id>.tar
                        import posixpath
                        links.append((name, posixpath.normpath(posixpath.join(posixpath.dirname(name),
                                                                              ti.linkname))))
            for name, target in links:
                if target in self.members:
                    self.members[name] = self.members[target]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise TransportError(f"{path} is not an image archive: {e}",
                                 fix="give an archive made by podman save, docker save or skopeo copy") from None

    def blob(self, digest):
        algo, _, hexd = (digest or "").partition(":")
        if algo != "sha256" or len(hexd) != 64:
            raise TransportError(f"{self.where}: bad blob digest {digest!r}")
        m = self.members.get(f"blobs/sha256/{hexd}")
        if m is None:
            raise TransportError(f"{self.where}: blob {digest} is missing from the archive",
                                 fix="the archive is incomplete: save it again")
        return self.path, m[0], m[1]

    def read(self, name):
        m = self.members.get(name)
        if m is None:
            raise TransportError(f"{self.where}: {name} is missing from the archive",
                                 fix="give an archive made by podman save, docker save or skopeo copy")
        with open(self.path, "rb") as f:
            f.seek(m[0])
            return f.read(min(m[1], 64 << 20))


def _clean(name):
    while name.startswith("./"):
        name = name[2:]
    return name


def plain_archive(path, ctx):
    """The path of an uncompressed copy of `path` (itself when it is not compressed)."""
    with open(path, "rb") as f:
        head = f.read(6)
    opener = None
    if head[:2] == b"\x1f\x8b":
        import gzip as opener
    elif head[:3] == b"BZh":
        import bz2 as opener
    elif head[:6] == b"\xfd7zXZ\x00":
        import lzma as opener
    if opener is None:
        return path
    from runtime.image.store import Store
    store = Store(ctx.root, ctx.runroot).open()
    tmp = store.tmpdir()
    out = f"{tmp}/archive.tar"
    import shutil
    try:
        with opener.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError) as e:
        raise TransportError(f"{path}: cannot decompress: {e}") from None
    return out


def open_source(text, ctx, opts=None):
    path, _, tag = text.partition(":")
    if not os.path.isfile(path):
        raise TransportError(f"oci-archive:{text}: no such file")
    return Source(ArchiveLayout(plain_archive(path, ctx), where=path), tag or None)
