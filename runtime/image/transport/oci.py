"""oci:DIR[:TAG]: an OCI image layout directory (index.json, blobs/sha256/...)."""
import os

from runtime.errors import SpecError
from runtime.image.transport import MEDIA_INDEX, Image, TransportError, choose, load_json

REF_NAME = "org.opencontainers.image.ref.name"


class Layout:
    """Blobs by digest from a directory, or (subclass) from an archive."""

    def __init__(self, where):
        self.where = where

    def name(self):
        base = os.path.basename(self.where.rstrip("/")).lower()
        for ext in (".tar", ".oci"):
            base = base[:-len(ext)] if base.endswith(ext) else base
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("._-") or "image"

    def blob(self, digest):
        """(path, offset, length) of a blob."""
        algo, _, hexd = (digest or "").partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise TransportError(f"{self.where}: bad blob digest {digest!r}")
        path = f"{self.where}/blobs/sha256/{hexd}"
        if not os.path.isfile(path):
            raise TransportError(f"{self.where}: blob {digest} is missing", fix="the layout is incomplete: copy "
                                 "it again")
        return path, 0, -1

    def read(self, name):
        path = f"{self.where}/{name}"
        try:
            with open(path, "rb") as f:
                return f.read(64 << 20)
        except OSError as e:
            raise TransportError(f"{self.where}: {name}: {e.strerror}",
                                 fix="give an OCI layout directory (oci-layout, index.json, blobs/)") from None

    def read_blob(self, digest):
        path, offset, length = self.blob(digest)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length if length >= 0 else 64 << 20)
        from runtime.image.transport import sha256
        if sha256(data) != digest:
            raise TransportError(f"{self.where}: blob {digest}: digest mismatch",
                                 fix="the file is corrupted: pull or save the image again")
        return data


class Source:
    def __init__(self, layout, tag=None, names=None):
        self.layout = layout
        self.tag = tag
        self.names = names

    def images(self, platform):
        index = load_json(self.layout.read("index.json"), f"{self.layout.where}: index.json")
        manifests = index.get("manifests") or []
        if self.tag:
            manifests = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) == self.tag]
            if not manifests:
                raise TransportError(f"{self.layout.where}: no image tagged {self.tag!r}")
        if not manifests:
            raise TransportError(f"{self.layout.where}: index.json lists no image")
        if len(manifests) > 1 and all("platform" in m for m in manifests):
            # index.json is itself the multi-platform index (otherwise: several images, all loaded)
            manifests = [choose({"manifests": manifests}, platform, self.layout.where)]
        out = []
        for desc in manifests:
            out.append(self.image(desc, platform))
        return out

    def image(self, desc, platform):
        from runtime.image import ref
        digest = desc.get("digest")
        data = self.layout.read_blob(digest)
        doc = load_json(data, f"manifest {digest}")
        outer = desc
        if doc.get("mediaType") in MEDIA_INDEX or desc.get("mediaType") in MEDIA_INDEX or "manifests" in doc:
            desc = choose(doc, platform, f"image index {digest}")
            digest = desc["digest"]
            data = self.layout.read_blob(digest)
            doc = load_json(data, f"manifest {digest}")
        if "config" not in doc or "layers" not in doc:
            raise TransportError(f"manifest {digest} is not an image manifest")
        config_digest = doc["config"].get("digest")
        config = self.layout.read_blob(config_digest)
        blobs = [(self.layout.blob(layer.get("digest")), layer.get("digest")) for layer in doc["layers"]]
        names = self.names
        if names is None:
            names = []
            tag = (outer.get("annotations") or {}).get(REF_NAME) or (desc.get("annotations") or {}).get(REF_NAME)
            if tag:
                # a full reference as ref.name (skopeo, buildah), or only a tag: named after the layout
                text = tag if "/" in tag or ":" in tag else f"{self.layout.name()}:{tag}"
                try:
                    names = [str(ref.parse(text, ref.LOCAL_DOMAIN))]
                except SpecError:
                    names = []
        return Image(names, digest, config, config_digest, blobs)


def open_source(text, ctx, opts=None):
    path, _, tag = text.partition(":")
    if not os.path.isdir(path):
        raise TransportError(f"oci:{text}: {path} is not a directory", fix="give an OCI layout directory")
    return Source(Layout(os.path.abspath(path)), tag or None)
