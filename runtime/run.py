#!/usr/bin/python3 -I
"""pirun: run a command in a rootless container.  run.py --help for the options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def _warn(text, prefix="warning: "):
    os.write(2, f"run.py: {prefix}{text}\n".encode(errors="replace"))


def main(argv=None):
    from runtime.errors import PirunError
    argv = sys.argv[1:] if argv is None else argv
    try:
        from runtime import cli
        action, payload = cli.parse(argv)
        if action in ("help", "version"):
            sys.stdout.write(payload if payload.endswith("\n") else payload + "\n")
            return 0
        if action == "check":
            from runtime import check
            return check.main(["--rootfs", payload] if payload else [])
        spec, hostcfg = payload
        from runtime.launcher import launch
        return launch(spec, hostcfg, _warn)
    except PirunError as e:
        _warn(e.line(), prefix="error: ")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:            # a bug of ours: still one line, still 125
        _warn(f"internal error: {type(e).__name__}: {e}", prefix="error: ")
        return 125


if __name__ == "__main__":
    sys.exit(main())
