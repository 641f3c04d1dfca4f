"""Containers' writable layers: ROOT/containers/<ID>/ {upper, work, merged, lock, container.json}.

`prepare` turns a Spec for an image (or for --rootfs DIR:O) into the Spec of a container on its own overlay
and returns a `WritableLayer` handle holding the layer's lock (an flock on ROOT/containers/<ID>/lock, held
while the container's launcher or monitor lives: the kernel releases it at their death, also after kill -9).
A writable layer is debris when its lock can be taken and no state record ($RUNROOT/containers/<ID>) names
it; every pirun command that touches the store removes debris (runtime.image.store.Store.clean).
An unnamed foreground container's layer is removed by process I when the container ends.
"""
import fcntl
import os

from runtime.image.store import Store, StoreError, json_record, now
from runtime.spec import Overlay


def new_id():
    return os.urandom(32).hex()


class WritableLayer:
    def __init__(self, store, cid, lock_fd, dir_fd):
        self.store = store
        self.id = cid
        self.path = f"{store.containers}/{cid}"
        self.lock_fd = lock_fd          # the flock; keep it open as long as the container lives
        self.dir_fd = dir_fd            # ROOT/containers, passed to process I for the removal
        self.stop_signal = None         # the image's StopSignal, as written there ("SIGQUIT", "3")
        self.healthcheck = None         # the image's Healthcheck (runtime.image.config.healthcheck)

    def hand_over(self):
        """The lock fd, now the caller's to keep open while the container lives and to close."""
        fd, self.lock_fd = self.lock_fd, None
        return fd

    def release(self):
        for name in ("lock_fd", "dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def remove(self):
        """Remove the layer (idempotent): nothing to do when process I already did it."""
        self.release()
        if os.path.lexists(self.path):
            self.store.remove([self.path])


def _lowers(ctx, store, opts, spec, warn):
    """(layer dirs topmost first, image record or None)."""
    if opts.image is None:
        return [spec.rootfs], None
    from runtime.image import ref
    rec = store.lookup(opts.image)
    wanted = ref.parse_platform(opts.platform) if opts.platform else None
    stale = rec is not None and wanted is not None and not _fits(rec, wanted)
    policy = opts.pull or "missing"
    if policy not in ("missing", "always", "never", "newer"):
        from runtime.errors import SpecError
        raise SpecError(f"--pull {policy}: expected always, missing, never or newer")
    if rec is None or stale or policy == "always":
        if policy == "never" or ref.is_id_prefix(opts.image) and rec is None and policy != "always":
            raise StoreError(f"image {opts.image} is not in the store" +
                             (f" for {wanted}" if stale else ""),
                             fix=f"pirun pull {opts.image} (or pirun load -i ARCHIVE)")
        from runtime.cmd.images import pull_image
        rec = pull_image(ctx, opts.image, opts.platform, warn)
    return [f"{store.layer_dir(d)}/diff" for d in reversed(rec["layers"])], rec


def _fits(rec, platform):
    os_, arch, *variant = rec.get("platform", "").split("/")
    return os_ == platform.os and arch == platform.arch and (not platform.variant or
                                                              (variant or ["v8" if arch == "arm64" else ""])[0]
                                                              == platform.variant)


def prepare(ctx, spec, opts, container_id, remove_on_exit=True, warn=None):
    """(Spec on the container's own overlay, WritableLayer). `remove_on_exit`: process I removes the layer
    when the container ends (unnamed foreground containers)."""
    from runtime.image import overlay
    store = Store(ctx.root, ctx.runroot).open()
    store.clean(wait=False)
    lowers, rec = _lowers(ctx, store, opts, spec, warn or ctx.warn)
    driver = overlay.choose_driver(ctx.root)
    if not lowers:
        lowers = [_empty(store)]
    if spec.read_only and len(lowers) == 1:
        lowers.append(_empty(store))                 # overlayfs needs two lower layers without an upper
    stop_signal = healthcheck = None
    if rec is not None:
        from runtime.image import config
        spec, stop_signal = config.apply(spec, opts, rec["config"], lowers)
        healthcheck = config.healthcheck(rec["config"])
    path = f"{store.containers}/{container_id}"
    lock = store.shared()
    dir_fd = lock_fd = None
    try:
        try:
            os.mkdir(path, 0o700)
            lock_fd = os.open(f"{path}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.mkdir(f"{path}/merged", 0o755)
            upper = work = None
            if not spec.read_only:
                upper, work = f"{path}/upper", f"{path}/work"
                os.mkdir(upper, 0o755)
                os.mkdir(work, 0o700)
            record = {"id": container_id, "image": rec["id"] if rec else None, "image_name": opts.image,
                      "rootfs": None if rec else spec.rootfs, "name": opts.name, "created": now(),
                      "stop_signal": stop_signal}
            with open(f"{path}/container.json", "w") as f:
                f.write(json_record(record))
            dir_fd = os.open(store.containers, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            if lock_fd is not None:
                os.close(lock_fd)
            store.remove([path]) if os.path.lexists(path) else None
            raise StoreError(f"create the container's writable layer in {path}: {e.strerror}",
                             fix=f"free space under {ctx.root} or choose another --root") from None
    finally:
        os.close(lock)
    layer = WritableLayer(store, container_id, lock_fd, dir_fd)
    layer.stop_signal = stop_signal
    layer.healthcheck = healthcheck
    mkdirs = ()
    if upper is not None:
        mkdirs = tuple((v.target, os.path.isdir(v.host)) for v in spec.volumes)
        if spec.workdir != "/":
            mkdirs += ((spec.workdir, True),)
    ov = Overlay(lowers=tuple(lowers), upper=upper, work=work, driver=driver, mkdirs=mkdirs,
                 remove=(dir_fd, container_id) if remove_on_exit else None, volatile=remove_on_exit)
    return spec.replace(rootfs=f"{path}/merged", overlay=ov), layer


def _empty(store):
    path = f"{store.root}/empty"
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    return path


def remove_layer(ctx, container_id, wait=0.0):
    """Remove a container's writable layer by ID (for `pirun rm`); refused while its lock is held (after up to
    `wait` seconds: a stopped container's last processes may still be on their way out)."""
    store = Store(ctx.root, ctx.runroot)
    path = f"{store.containers}/{container_id}"
    if not os.path.lexists(path):
        return False
    try:
        fd = os.open(f"{path}/lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        import time
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
            os.close(fd)
            raise StoreError(f"container {container_id[:12]} is running: its writable layer stays",
                             fix="stop it first (pirun stop)") from None
        os.close(fd)
    store.remove([path])
    return True
