"""docker://REF: an image from a registry, fetched by skopeo (Debian's package).

skopeo reads /etc/containers/registries.conf (mirrors, insecure registries), the auth files podman users
have (${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json) and
/etc/containers/certs.d; it checks every blob's digest while it downloads. It copies the one image of the
chosen platform into an OCI layout under the store's scratch directory, which the oci transport then reads;
skopeo dies with pirun (PR_SET_PDEATHSIG) and the scratch directory is debris once pirun is gone.
"""
import os

from runtime.image.transport import TransportError

FIX_INSTALL = "apt-get install skopeo (the pirun_prereqs role installs it)"


class PullOptions:
    __slots__ = ("tls_verify", "creds", "authfile", "cert_dir", "quiet")

    def __init__(self, tls_verify=None, creds=None, authfile=None, cert_dir=None, quiet=True):
        self.tls_verify, self.creds, self.authfile, self.cert_dir, self.quiet = (tls_verify, creds, authfile,
                                                                               cert_dir, quiet)


def skopeo_path():
    from runtime.tools import find as find_tool
    path = find_tool("skopeo")
    if path is None:
        raise TransportError("pull: skopeo not found", fix=FIX_INSTALL)
    return path


def _src_args(opts, prefix="--src-"):
    """skopeo copy's source options (prefix "--"  for skopeo inspect)."""
    args = []
    if opts.tls_verify is not None:
        args.append(f"{prefix}tls-verify={'true' if opts.tls_verify else 'false'}")
    if opts.creds:
        args.append(f"{prefix}creds={opts.creds}")
    if opts.authfile:
        args.append(f"{'--' if prefix == '--' else prefix}authfile={opts.authfile}")
    if opts.cert_dir:
        args.append(f"{prefix}cert-dir={opts.cert_dir}")
    return args


def run_skopeo(argv, what, tick=None):
    """Run skopeo, pdeathsig'd; returns stdout bytes or raises a one-line TransportError from its message.
    tick() is called about every 20 ms while it runs (an exception from it kills skopeo)."""
    import _signal
    from runtime import libc
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(125)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.execve(argv[0], argv, {**os.environ, "LC_ALL": "C"})
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)
    import selectors
    sel = selectors.DefaultSelector()
    bufs = {out_r: [], err_r: []}
    sel.register(out_r, selectors.EVENT_READ)
    sel.register(err_r, selectors.EVENT_READ)
    try:
        while sel.get_map():
            if tick is not None:
                tick()
            for key, _ in sel.select(0.02 if tick is not None else None):
                b = os.read(key.fd, 65536)
                if b:
                    bufs[key.fd].append(b)
                else:
                    sel.unregister(key.fd)
    except BaseException:
        os.kill(pid, _signal.SIGKILL)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise _error(what, b"".join(bufs[err_r]).decode(errors="replace"))
    return b"".join(bufs[out_r])


def _message(stderr):
    """skopeo's last message, without its logrus decoration."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    if not lines:
        return "skopeo failed"
    line = lines[-1]
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
    return " ".join(line.split())


def _error(what, stderr):
    msg = _message(stderr)
    low = msg.lower()
    fix = None
    if "manifest unknown" in low or "not found" in low and "manifest" in low or "name unknown" in low:
        fix = "check the name and the tag (skopeo list-tags docker://REPOSITORY lists the tags)"
        msg = f"no such image or tag ({msg})"
    elif "unauthorized" in low or "authentication required" in low or "invalid username/password" in low or \
            "401" in low:
        fix = "give valid credentials: --creds USER:PASSWORD or an auth file (--authfile, podman login)"
        msg = f"authentication refused ({msg})"
    elif "connection refused" in low or "no such host" in low or "i/o timeout" in low or "no route" in low:
        fix = "check that the registry runs and is reachable, and the name's host:port"
        msg = f"registry unreachable ({msg})"
    elif "http response to https client" in low:
        fix = "for a plain-HTTP registry pass --tls-verify=false (or list it as insecure in registries.conf)"
    elif "certificate" in low or "x509" in low:
        fix = "trust the registry's CA: --cert-dir DIR with ca.crt, or /etc/containers/certs.d/HOST:PORT/ca.crt"
    elif "digest" in low and ("match" in low or "mismatch" in low):
        fix = "the registry serves a corrupted blob: push the image again"
        msg = f"digest mismatch ({msg})"
    elif "no image found in manifest list" in low or "choosing an image from manifest list" in low:
        fix = "choose a platform the image has with --platform OS/ARCH[/VARIANT]"
    elif "no space left" in low:
        fix = "free space under the store or choose another with --root"
    return TransportError(f"{what}: {msg}", fix=fix)


def pull(text, ctx, platform, opts, scratch):
    """skopeo copy docker://REF oci:SCRATCH:image; returns the oci Source of the copy."""
    from runtime.image import ref
    from runtime.image.transport import load_json, oci
    reference = ref.parse(text)
    skopeo = skopeo_path()
    src = f"docker://{reference}"
    argv = [skopeo, "--override-os", platform.os, "--override-arch", platform.arch]
    if platform.variant:
        argv += ["--override-variant", platform.variant]
    argv += ["copy", "--quiet", "--retry-times", "0"] + _src_args(opts) + [src, f"oci:{scratch}:image"]
    what = f"pull {reference}"
    known = _known_blobs(ctx, scratch)
    import pwd
    from runtime.image import unpack
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    pool = unpack.StreamPool(f"{ctx.root}/layers", user, workers=min(2, os.cpu_count() or 1))
    fed = set(known)
    blobs = f"{scratch}/blobs/sha256"

    def feed():
        """Hand every blob skopeo has finished (renamed into blobs/, digest checked) to the unpackers."""
        pool.failed()
        for name in os.listdir(blobs):
            if name in fed or len(name) != 64:
                continue
            fed.add(name)
            path = f"{blobs}/{name}"
            with open(path, "rb") as f:
                head = f.read(1)
            if head in (b"{", b""):                       # a manifest or config (JSON): not a layer
                continue
            pool.feed(path, os.stat(path).st_size)
    try:
        try:
            run_skopeo(argv, what, tick=feed)
            feed()
        except BaseException:
            pool.abort()
            raise
        unpacked = pool.finish()
    except TransportError as e:
        if "manifest list" in e.message:
            # name the platforms the image has: one more request, only on this error path
            try:
                raw = run_skopeo([skopeo, "inspect", "--raw", "--retry-times", "0"] + _src_args(opts, "--") + [src],
                                 what)
                from runtime.image.transport import choose
                choose(load_json(raw, "the image index"), platform, f"{reference}")
            except TransportError as better:
                raise better from None
        raise
    return oci.Source(oci.Layout(scratch), "image", names=[str(reference)]), unpacked


def _known_blobs(ctx, scratch):
    """Layers the store has, as sparse placeholders named by their compressed digest and of their size in
    skopeo's destination: skopeo skips blobs the destination has, so a pull downloads only new layers (the
    oci transport never reads these: their layers are not unpacked again)."""
    from runtime.image.store import _listdir
    layers = f"{ctx.root}/layers"
    blobs = f"{scratch}/blobs/sha256"
    os.makedirs(blobs, exist_ok=True)
    known = set()
    for name in _listdir(layers):
        if len(name) != 64:
            continue
        try:
            with open(f"{layers}/{name}/blob") as f:
                digest, size = f.read().split()
        except (OSError, ValueError):
            continue
        hexd = digest.partition(":")[2]
        if len(hexd) == 64 and hexd.isalnum():
            fd = os.open(f"{blobs}/{hexd}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, int(size))
            finally:
                os.close(fd)
            known.add(hexd)
    return known


def open_source(text, ctx, opts=None):
    raise TransportError("docker:// references are pulled: pirun pull REF", fix="pirun pull " + text)
