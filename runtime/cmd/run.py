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
    if opts.replace:
        if not opts.name:
            from runtime.errors import SpecError
            raise SpecError("--replace needs --name", fix="pirun run --replace --name NAME ...")
        from runtime.cmd.containers import replace
        replace(ctx, opts.name)
    container_id = os.urandom(32).hex()       # 64 hex digits: the record's, the log's and the layer's name
    recorded = bool(opts.detach or opts.name)
    layer = None
    if opts.image is not None or opts.rootfs_overlay:
        # The container's own writable layer over the image (or over --rootfs DIR:O): runtime.image. Process I
        # removes it when the container ends, unless the container is recorded and kept (named, no --rm).
        from runtime.image.container import prepare
        spec, layer = prepare(ctx, spec, opts, container_id, remove_on_exit=not recorded or opts.remove,
                              warn=ctx.warn)
    if not recorded:
        from runtime.launcher import launch
        try:
            return launch(spec, hostcfg, ctx.warn)          # as run.py: stateless
        finally:
            if layer is not None:
                layer.remove()
    from runtime.lifecycle.monitor import run_container
    started = False
    try:
        code = run_container(ctx, spec, hostcfg, opts, container_id,
                             hold=(layer.hand_over(),) if layer is not None else (),
                             stop_signal=layer.stop_signal if layer is not None else None,
                             image_health=layer.healthcheck if layer is not None else None)
        started = True
        return code
    finally:
        if layer is not None:
            # Started: the monitor (and process I) hold the layer's lock now; a named container keeps its layer
            # until `pirun rm`. Not started: nothing may be left.
            layer.release() if started else layer.remove()
