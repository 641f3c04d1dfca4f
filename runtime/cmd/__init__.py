"""The `pirun` command: global options, then one subcommand, imported only when it is the one asked for.

    pirun [--root DIR] [--runroot DIR] SUBCOMMAND [ARGS...]

Each subcommand is `main(argv, ctx) -> int` in a module of this package; `COMMANDS` maps podman's names
(including two-word ones such as `image prune`) to "module:function". Errors are `PirunError`s, caught here
only: one line `pirun: error: ...`, the error's exit code (125 unless it says otherwise).
"""
import os
import sys

from runtime.spec import Record

USAGE = "usage: pirun [--root DIR] [--runroot DIR] COMMAND [ARG...]"

# name -> "module:function" (module relative to runtime.cmd)
COMMANDS = {
    "run": "run:main",
    "pull": "images:pull",
    "load": "images:load",
    "import": "images:import_",
    "images": "images:images",
    "image ls": "images:images",
    "image list": "images:images",
    "rmi": "images:rmi",
    "image rm": "images:rmi",
    "image prune": "images:prune",
    "image inspect": "images:inspect",
    "system df": "images:system_df",
    "ps": "containers:ps",
    "container ls": "containers:ps",
    "logs": "containers:logs",
    "exec": "containers:exec_",
    "stop": "containers:stop",
    "kill": "containers:kill",
    "rm": "containers:rm",
    "container rm": "containers:rm",
    "wait": "containers:wait",
    "inspect": "containers:inspect",
    "stats": "containers:stats",
    "healthcheck run": "containers:healthcheck_run",
}

HELP = f"""{USAGE}

Rootless containers for ordinary users, with podman's command names, options and exit codes.

Images:      pull, load, import, images, rmi, image prune, image inspect, system df
Containers:  run, ps, logs, exec, stop, kill, rm, wait, inspect, stats, healthcheck run

Global options:
  --root DIR      image and container store (default $XDG_DATA_HOME/pirun, ~/.local/share/pirun)
  --runroot DIR   container state (default $XDG_RUNTIME_DIR/pirun; a tmpfs, gone at reboot)
  -h, --help      this help;  pirun COMMAND --help for a command's options
  --version       print the version

Exit status (podman's): the command's own; 125 pirun's error; 126 cannot execute; 127 not found; 128+N signal N.
"""


class Context(Record):
    """What every subcommand gets: where the store and the state live, and how to say things."""
    __slots__ = ("root", "runroot", "prog")
    _defaults = {"prog": "pirun"}

    def warn(self, text, prefix="warning: "):
        os.write(2, f"{self.prog}: {prefix}{text}\n".encode(errors="replace"))


def default_root(environ):
    base = environ.get("XDG_DATA_HOME") or os.path.join(environ.get("HOME") or _home(), ".local", "share")
    return os.path.join(base, "pirun")


def default_runroot(environ):
    base = environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = f"/tmp/pirun-run-{os.getuid()}"          # no login session (cron, su): podman does the same
    return os.path.join(base, "pirun")


def _home():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_dir


def _parse_globals(argv, environ):
    from runtime.errors import SpecError
    root = runroot = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--root", "--runroot"):
            if not eq:
                if i + 1 >= len(argv):
                    raise SpecError(f"option {name} needs a value", fix="see pirun --help")
                i += 1
                value = argv[i]
            if not value or "\0" in value:
                raise SpecError(f"option {name}: empty or invalid directory")
            value = os.path.abspath(value)
            if name == "--root":
                root = value
            else:
                runroot = value
            i += 1
        elif arg in ("-h", "--help", "--version"):
            break
        else:
            raise SpecError(f"unknown option {arg}", fix="global options are --root and --runroot; see pirun --help")
    ctx = Context(root=root or environ.get("PIRUN_ROOT") or default_root(environ),
                  runroot=runroot or environ.get("PIRUN_RUNROOT") or default_runroot(environ))
    return ctx, argv[i:]


def _lookup(rest):
    if len(rest) >= 2 and f"{rest[0]} {rest[1]}" in COMMANDS:
        return COMMANDS[f"{rest[0]} {rest[1]}"], rest[2:]
    if rest and rest[0] in COMMANDS:
        return COMMANDS[rest[0]], rest[1:]
    return None, rest


def main(argv, environ=None):
    from runtime.errors import PirunError, SpecError
    environ = os.environ if environ is None else environ
    ctx = Context(root="", runroot="")
    try:
        ctx, rest = _parse_globals(list(argv), environ)
        if not rest or rest[0] in ("-h", "--help", "help"):
            sys.stdout.write(HELP)
            return 0 if rest else 125
        if rest[0] == "--version":
            from runtime.cli import VERSION
            sys.stdout.write(f"pirun version {VERSION}\n")
            return 0
        target, args = _lookup(rest)
        if target is None:
            raise SpecError(f"unknown command {rest[0]!r}", fix="see pirun --help")
        module, _, function = target.partition(":")
        # __import__, not importlib.import_module: importlib's package costs its import (and warnings')
        return getattr(__import__(f"runtime.cmd.{module}", fromlist=(function,)), function)(args, ctx)
    except PirunError as e:
        ctx.warn(e.line(), prefix="error: ")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:            # a bug of ours: still one line, still 125
        ctx.warn(f"internal error: {type(e).__name__}: {e}", prefix="error: ")
        return 125
