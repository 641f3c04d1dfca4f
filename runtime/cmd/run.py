"""`pirun run [OPTIONS] IMAGE [COMMAND...]` and `pirun run --rootfs DIR[:O] [COMMAND...]`.

The options are run.py's (runtime.cli) plus podman's container options (-d, --name, --rm, --platform, -u, ...).
Flow: cli.parse -> (Spec, HostConfig, RunOptions) -> the image, if any, becomes the container's root (the
image's layers plus a writable layer of its own: runtime.image) -> foreground: the launcher, as run.py;
detached or named: the monitor (runtime.lifecycle).
"""
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
