"""Image references (docker's grammar, podman's normalisation) and platforms (os/arch[/variant])."""
import os

from runtime.errors import SpecError

DEFAULT_DOMAIN = "docker.io"
LOCAL_DOMAIN = "localhost"

_MACHINE = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
            "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "riscv64": ("riscv64", ""),
            "ppc64le": ("ppc64le", ""), "s390x": ("s390x", "")}


class Reference:
    """domain/path[:tag][@digest]; str() gives the normalised form podman shows."""
    __slots__ = ("domain", "path", "tag", "digest")

    def __init__(self, domain, path, tag, digest):
        self.domain, self.path, self.tag, self.digest = domain, path, tag, digest

    @property
    def repository(self):
        return f"{self.domain}/{self.path}"

    def __str__(self):
        s = self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def _valid_path(path):
    for comp in path.split("/"):
        if not comp or not all(c.islower() or c.isdigit() or c in "._-" for c in comp) or not comp[0].isalnum():
            return False
    return True


def parse(text, default_domain=DEFAULT_DOMAIN):
    """Parse a reference; a name without a registry gets `default_domain` (docker.io, library/ for one
    component; `localhost` for names given to loaded images, as podman does)."""
    if not text or "\0" in text or len(text) > 512 or text != text.strip():
        raise SpecError(f"invalid image reference {text!r}")
    name, at, digest = text.partition("@")
    if at and not (digest.startswith("sha256:") and len(digest) == 71 and _hex(digest[7:])):
        raise SpecError(f"invalid image reference {text!r}: bad digest", fix="a digest is sha256:<64 hex digits>")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not tag or len(tag) > 128 or not all(c.isalnum() or c in "._-" for c in tag) or tag[0] in ".-":
            raise SpecError(f"invalid image reference {text!r}: bad tag")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = default_domain, name
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = f"library/{path}"
    if not _valid_path(path):
        raise SpecError(f"invalid image reference {text!r}",
                        fix="names are lowercase letters, digits and . _ - separated by /")
    if not tag and not at:
        tag = "latest"
    return Reference(domain, path, tag, digest if at else "")


def _hex(s):
    return all(c in "0123456789abcdef" for c in s)


def is_id_prefix(text):
    t = text[7:] if text.startswith("sha256:") else text
    return 3 <= len(t) <= 64 and _hex(t)


# --- platforms ---------------------------------------------------------------------------------------------
class Platform:
    __slots__ = ("os", "arch", "variant")

    def __init__(self, os_, arch, variant=""):
        self.os, self.arch, self.variant = os_, arch, variant

    def __str__(self):
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")

    def matches(self, p):
        """Does the index entry's platform dict `p` fit? arm64 without a variant is v8 (as containerd)."""
        if p.get("os") != self.os or p.get("architecture") != self.arch:
            return False
        if not self.variant:
            return True
        have = p.get("variant") or ("v8" if self.arch == "arm64" else "")
        return have == self.variant


def host_platform():
    arch, variant = _MACHINE.get(os.uname().machine, (os.uname().machine, ""))
    return Platform("linux", arch, variant)


def parse_platform(text):
    parts = (text or "").split("/")
    if len(parts) not in (2, 3) or not all(parts) or not all(p.isascii() and p.replace("_", "").isalnum()
                                                             for p in parts):
        raise SpecError(f"--platform {text!r}: expected OS/ARCH[/VARIANT]", fix="e.g. linux/arm64/v8 or linux/amd64")
    return Platform(*parts)


def platform_of(p):
    """Text of an index entry's (or a config's) platform dict."""
    s = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")
