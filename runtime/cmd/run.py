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
    return launch(spec, hostcfg, ctx.warn)
