"""docker-archive:FILE: what `docker save` and `podman save` write (manifest.json, configs, layer tarballs).

The archive's manifest.json lists each image's config, RepoTags and layers; layer tarballs are uncompressed
(their sha256 is the diff ID) or compressed; blobs are read in place from the archive.
"""
import os

from runtime.image.transport import Image, TransportError, load_json, sha256
from runtime.image.transport.oci_archive import ArchiveLayout, plain_archive


class Source:
    def __init__(self, layout):
        self.layout = layout

    def images(self, platform):
        from runtime.image import ref
        from runtime.errors import SpecError
        entries = load_json(self.layout.read("manifest.json"), f"{self.layout.where}: manifest.json")
        if not isinstance(entries, list) or not entries:
            raise TransportError(f"{self.layout.where}: manifest.json lists no image")
        out = []
        for entry in entries:
            cfg_name = entry.get("Config")
            layers = entry.get("Layers")
            if not isinstance(cfg_name, str) or not isinstance(layers, list):
                raise TransportError(f"{self.layout.where}: manifest.json entry without Config or Layers")
            config = self.layout.read(_clean(cfg_name))
            base = os.path.basename(cfg_name)
            digest = None
            hexd = base[:-5] if base.endswith(".json") else base
            if len(hexd) == 64 and all(c in "0123456789abcdef" for c in hexd):
                digest = "sha256:" + hexd              # config files are named by their digest
            blobs = []
            for name in layers:
                m = self.layout.members.get(_clean(name))
                if m is None:
                    raise TransportError(f"{self.layout.where}: layer {name} is missing from the archive",
                                         fix="the archive is incomplete: save it again")
                blobs.append(((self.layout.path, m[0], m[1]), None))
            names = []
            for tag in entry.get("RepoTags") or ():
                try:
                    names.append(str(ref.parse(tag, ref.LOCAL_DOMAIN)))
                except SpecError:
                    pass
            out.append(Image(names, "", config, digest or sha256(config), blobs))
        return out


def _clean(name):
    return name[2:] if name.startswith("./") else name


def open_source(text, ctx, opts=None):
    path = text.rsplit(":", 1)[0] if not os.path.exists(text) and ":" in text else text
    if not os.path.isfile(path):
        raise TransportError(f"docker-archive:{text}: no such file")
    return Source(ArchiveLayout(plain_archive(path, ctx), where=path))
