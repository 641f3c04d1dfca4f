"""`pirun run [OPTIONS] IMAGE [COMMAND...]` and `pirun run --rootfs DIR[:O] [COMMAND...]`.

The options are run.py's (runtime.cli) plus podman's container options (-d, --name, --rm, --platform, -u, ...).
Flow: cli.parse -> (Spec, HostConfig, RunOptions) -> the image, if any, becomes the container's root (the
image's layers plus a writable layer of its own: runtime.image) -> foreground: the launcher, as run.py;
detached or named: the monitor (runtime.lifecycle.monitor), which records the container under --runroot.
"""
import os
import sys


def main(argv, ctx):
    from runtime import cli
    action, payload = cli.parse(argv, pirun=True)
    if action in ("help", "version"):
        sys.stdout.write(payload if payload.endswith("\n") else payload + "\n")
        return 0
    if action == "check":
        from runtime import check
        return check.main(["--rootfs", payload] if payload else [])
    spec, hostcfg, opts = payload
    if opts.detach:
        # detached: a terminal only with an explicit -t (the caller's terminal is not the container's)
        _, (spec, hostcfg, opts) = cli.parse(argv, pirun=True, stdin_tty=False, stdout_tty=False)
    container_id = os.urandom(32).hex()       # 64 hex digits: the record's, the log's and the layer's name
    hold = ()
    if opts.image is not None:
        # The image's prepared root plugs in here (runtime.image):
        #     spec, image = prepare(ctx, spec, opts, container_id)     # an adjusted Spec, a handle
        #     hold = (image.lock_fd,)                                   # held while the container lives
        from runtime.errors import SpecError
        raise SpecError(f"image {opts.image}: images are not available in this build", fix="use --rootfs DIR")
    if opts.detach or opts.name:
        from runtime.lifecycle.monitor import run_container
        return run_container(ctx, spec, hostcfg, opts, container_id, hold)
    from runtime.launcher import launch
    if opts.image is None and not opts.rootfs_overlay:
        return launch(spec, hostcfg, ctx.warn)          # --rootfs DIR: as run.py, stateless
    from runtime.image.container import new_id, prepare
    spec, layer = prepare(ctx, spec, opts, new_id(), remove_on_exit=not (opts.detach or opts.name))
    try:
        return launch(spec, hostcfg, ctx.warn)
    finally:
        if opts.detach or opts.name:
            layer.release()
        else:
            layer.remove()
