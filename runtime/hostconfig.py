"""The host configuration: /etc/pirun/pirun.conf (or $PIRUN_CONFIG), the one file the Ansible roles write.

Format, hand-parsed (tomllib costs ~10 ms to import, this module only `os`):

    # comment
    rootfs = /opt/pirun/rootfs_arm          # absolute path of the default rootfs
    cgroup_base = /sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/pirun.slice
    net = slirp4netns                       # default --net: slirp4netns, pasta, none, host
    pids_limit = 2048                       # default pids limit of a container; 0 or max: none

One `key = value` a line; blank lines and lines starting with `#` are ignored, as is ` # ...` after a value;
a value may be quoted with "..." or '...'. cgroup_base may hold `{uid}` and `{user}` (one file serves every
user of the host); they are kept as written and expanded only by `expand_cgroup_base()`, which the cgroup
manager and `--check` call. pids_limit is an int: N, or 0 for `0`/`max` (no default limit); None when absent
(the cgroup manager's default then applies). Setting pids_limit or cgroup_base asks for cgroups: a host that
cannot give them is then an error (runtime/cgroup `config_asks`; `run.py --check` makes them required).
An unknown key, a repeated key or a bad value is a SpecError naming the file, the line and the key. A missing
/etc/pirun/pirun.conf means defaults; a missing $PIRUN_CONFIG is an error (it was asked for).

`default_rootfs(repo_dir, cfg)` picks run.py's rootfs when --rootfs is not given; `rootfs_build_command()` and
`require_rootfs()` say how to build a missing one.
"""
import os

from runtime.errors import SpecError
from runtime.net import BACKENDS
from runtime.spec import Record

DEFAULT_CONFIG = "/etc/pirun/pirun.conf"
ENV = "PIRUN_CONFIG"
KEYS = ("rootfs", "cgroup_base", "net", "pids_limit")
PIDS_MAX = 4194304          # the kernel's PID_MAX_LIMIT on 64-bit


class HostConfig(Record):
    """Immutable. Every field None when not configured; `path` is the file read (None: no file)."""
    __slots__ = ("path", "rootfs", "cgroup_base", "net", "pids_limit")
    _defaults = {"path": None, "rootfs": None, "cgroup_base": None, "net": None, "pids_limit": None}


def _fail(path, lineno, key, reason, fix):
    where = f"{path} line {lineno}" + (f" key {key}" if key else "")
    raise SpecError(f"host config {where}: {reason}", fix=fix)


def _abs_path(value):
    return value.startswith("/") and "\0" not in value


def _parse_value(path, lineno, key, value):
    fix_file = f"edit {path} (written by the pirun_runtime role)"
    if key == "rootfs":
        if not _abs_path(value):
            _fail(path, lineno, key, f"{value!r} is not an absolute path", fix_file)
        return os.path.normpath(value)
    if key == "cgroup_base":
        probe = expand_cgroup_base(value, 0, "user")
        norm = os.path.normpath(probe) if _abs_path(probe) else ""
        if norm != "/sys/fs/cgroup" and not norm.startswith("/sys/fs/cgroup/"):
            _fail(path, lineno, key, f"{value!r} is not a directory under /sys/fs/cgroup", fix_file)
        if "{" in probe or "}" in probe:
            _fail(path, lineno, key, f"{value!r}: only {{uid}} and {{user}} may be substituted", fix_file)
        return value.rstrip("/")
    if key == "net":
        if value not in BACKENDS:
            _fail(path, lineno, key, f"{value!r} is not one of {', '.join(BACKENDS)}", fix_file)
        return value
    if key == "pids_limit":
        if value == "max":
            return 0
        if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= PIDS_MAX:
            _fail(path, lineno, key, f"{value!r} is not a number of processes (0 to {PIDS_MAX}) or max",
                  fix_file)
        return int(value)
    raise AssertionError(key)


def expand_cgroup_base(base, uid=None, user=None):
    """cgroup_base with {uid} and {user} replaced (default: this process's user; its uid when it has no
    name), without a trailing slash."""
    if "{" in base:
        if uid is None:
            uid = os.getuid()
        if user is None and "{user}" in base:
            import pwd
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = str(uid)
        base = base.replace("{uid}", str(uid)).replace("{user}", user or "")
    return base.rstrip("/") or "/"


def parse(text, path="<config>"):
    """HostConfig from the text of a config file (`path` only names it in errors)."""
    fields = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        value = value.strip()
        if not eq:
            _fail(path, lineno, None, f"expected `key = value`, got {line!r}",
                  f"edit {path}: one `key = value` a line, `#` for comments")
        if key not in KEYS:
            _fail(path, lineno, key, f"unknown key (known: {', '.join(KEYS)})",
                  f"remove or correct the line in {path}")
        if key in fields:
            _fail(path, lineno, key, "set twice", f"keep one `{key} = ...` line in {path}")
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            rest = value[end + 1:].strip() if end > 0 else "?"
            if end < 0 or (rest and not rest.startswith("#")):
                _fail(path, lineno, key, f"bad quoting in {value!r}", f"edit {path}")
            value = value[1:end]
        else:
            for sep in (" #", "\t#"):
                cut = value.find(sep)
                if cut >= 0:
                    value = value[:cut].rstrip()
        if not value:
            _fail(path, lineno, key, "empty value", f"give {key} a value or remove the line in {path}")
        fields[key] = _parse_value(path, lineno, key, value)
    return HostConfig(path=path, **fields)


def config_path():
    """The file load() reads and whether it was asked for explicitly ($PIRUN_CONFIG)."""
    env = os.environ.get(ENV)
    if env:
        return env, True
    return DEFAULT_CONFIG, False


def load(path=None):
    """Read the host configuration. Defaults when /etc/pirun/pirun.conf does not exist."""
    explicit = path is not None
    if path is None:
        path, explicit = config_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if explicit:
            raise SpecError(f"host config {path}: no such file",
                            fix=f"create it, or unset {ENV} to use {DEFAULT_CONFIG}") from None
        return HostConfig()
    except UnicodeDecodeError:
        raise SpecError(f"host config {path}: not UTF-8 text", fix=f"rewrite {path}") from None
    except OSError as e:
        raise SpecError(f"host config {path}: {e.strerror}",
                        fix=f"chmod 0644 {path} (the pirun_runtime role writes it world-readable)") from None
    return parse(text, path)


def default_rootfs(repo_dir, cfg):
    """run.py's rootfs without --rootfs: the config's, else REPO/rootfs_arm on aarch64, else REPO/rootfs_host."""
    if cfg is not None and cfg.rootfs:
        return cfg.rootfs
    name = "rootfs_arm" if os.uname().machine == "aarch64" else "rootfs_host"
    return os.path.join(repo_dir, name)


def rootfs_build_command(repo_dir, rootfs):
    """The command that builds `rootfs`: --arch aarch64 for .../rootfs_arm, else the host's architecture."""
    if os.path.basename(os.path.normpath(rootfs)) == "rootfs_arm" and os.uname().machine != "aarch64":
        arch = "aarch64"
    else:
        arch = "host"
    return f"cd {repo_dir} && python3 -m runtime.rootfs --arch {arch} --dest {rootfs}"


def require_rootfs(repo_dir, rootfs):
    """Raise SpecError with the build command when `rootfs` has no /bin (not built, or a wrong path)."""
    if os.path.isdir(os.path.join(rootfs, "bin")) or os.path.islink(os.path.join(rootfs, "bin")):
        return
    if not os.path.isdir(rootfs):
        reason = "no such directory"
    else:
        reason = "not a root filesystem (no /bin)"
    raise SpecError(f"rootfs {rootfs}: {reason}", fix=f"build it: {rootfs_build_command(repo_dir, rootfs)}")
