"""An image's config applied to a Spec, as podman applies it.

Env: the image's variables over pirun's defaults (PATH, HOME, HOSTNAME, container), -e over both.
Entrypoint + Cmd: the command is ENTRYPOINT followed by the user's COMMAND or else the image's Cmd;
--entrypoint replaces the image's and drops its Cmd. WorkingDir unless -w. User (numeric, or names from the
image's /etc/passwd and /etc/group) unless -u; HOME follows the user's passwd entry unless given.
StopSignal is returned for the container's record (the lifecycle commands use it).
Healthcheck ({Test, Interval, Timeout, Retries, StartPeriod}, durations in nanoseconds) is returned by
`healthcheck` for the container's monitor; --health-* and --no-healthcheck override it
(runtime.lifecycle.health.merge).
"""
import os

from runtime.errors import SpecError

_MAX_FILE = 1 << 20


def _read_image_file(lowers, path):
    """Content of `path` in the topmost layer that has it (resolved inside that layer), or None."""
    import stat
    from runtime.errors import SetupError
    from runtime.fs import open_in_root
    for layer in lowers:
        try:
            root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = open_in_root(root, path, "read")
        except SetupError:
            continue
        finally:
            os.close(root)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                return f.read(_MAX_FILE).decode(errors="replace")
        except OSError:
            continue
        finally:
            os.close(fd)
    return None


def _entries(text):
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0]:
            yield parts


def resolve_user(text, lowers):
    """'uid[:gid]' or 'name[:group]' -> (uid, gid, home or None)."""
    name, _, group = text.partition(":")
    passwd = None
    uid = gid = home = None
    if name.isdigit():
        uid = int(name)
        passwd = _read_image_file(lowers, "/etc/passwd")
        for p in _entries(passwd):
            if p[2] == name:
                gid = int(p[3]) if p[3].isdigit() else 0
                home = p[5] if len(p) > 5 else None
                break
    else:
        passwd = _read_image_file(lowers, "/etc/passwd")
        for p in _entries(passwd):
            if p[0] == name and p[2].isdigit():
                uid = int(p[2])
                gid = int(p[3]) if p[3].isdigit() else 0
                home = p[5] if len(p) > 5 else None
                break
        if uid is None:
            raise SpecError(f"user {name!r}: no such user in the image's /etc/passwd",
                            fix="give a numeric UID[:GID] or a user the image has")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for p in _entries(_read_image_file(lowers, "/etc/group")):
                if p[0] == group and p[2].isdigit():
                    gid = int(p[2])
                    break
            else:
                raise SpecError(f"group {group!r}: no such group in the image's /etc/group",
                                fix="give a numeric GID or a group the image has")
    if uid > 0xFFFFFFFE or (gid or 0) > 0xFFFFFFFE:
        raise SpecError(f"user {text!r}: ID out of range")
    return uid, gid or 0, home


def _entrypoint(text):
    if text.startswith("["):
        import json
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"--entrypoint {text!r}: expected a command or a JSON array of strings")
        return value
    return [text] if text else []


def apply(spec, opts, config, lowers):
    """Returns (spec, stop_signal)."""
    cfg = (config or {}).get("config") or {}
    explicit = opts.explicit
    env = dict(spec.env)
    given = {k: env[k] for k in opts.env_names if k in env}
    image_env = set()
    for item in cfg.get("Env") or ():
        if isinstance(item, str):
            k, eq, v = item.partition("=")
            if k and eq:
                env[k] = v
                image_env.add(k)
    env.update(given)

    if "entrypoint" in explicit:
        entry, cmd = _entrypoint(opts.entrypoint or ""), []
    else:
        entry, cmd = list(cfg.get("Entrypoint") or []), list(cfg.get("Cmd") or [])
    argv = entry + (list(spec.argv) if spec.argv else cmd)
    if not argv:
        raise SpecError(f"{opts.image or 'the image'}: no command: the image has neither Cmd nor Entrypoint",
                        fix="give one: pirun run IMAGE COMMAND [ARG...]")

    workdir = spec.workdir
    if "workdir" not in explicit and cfg.get("WorkingDir"):
        workdir = os.path.normpath(os.path.join("/", cfg["WorkingDir"]))

    user = None
    text = opts.user if "user" in explicit else cfg.get("User")
    if text:
        uid, gid, home = resolve_user(text, lowers)
        if (uid, gid) != (0, 0):
            user = (uid, gid)
        if home and "HOME" not in given and "HOME" not in image_env:
            env["HOME"] = home
    spec = spec.replace(argv=tuple(argv), env=tuple(env.items()), workdir=workdir, user=user)
    return spec, cfg.get("StopSignal")


def healthcheck(config):
    """The image's Healthcheck as written (only well-typed fields), or None."""
    hc = ((config or {}).get("config") or {}).get("Healthcheck")
    if not isinstance(hc, dict):
        return None
    out = {}
    test = hc.get("Test")
    if isinstance(test, list) and all(isinstance(t, str) for t in test):
        out["Test"] = list(test)
    for key in ("Interval", "Timeout", "Retries", "StartPeriod"):
        value = hc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    return out or None
