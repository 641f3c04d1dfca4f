"""Container records: what was started, and whether it still runs (the kernel says, not a file).

    RUNROOT/containers/ID/config     what the container is (command, rootfs, network, limits, log): written
                                     once at create
    RUNROOT/containers/ID/state      what happened (status, monitor and PID 1 with their start times, exit
                                     code, times): rewritten by the monitor, always temp file + rename
    RUNROOT/containers/ID/lock       flock'ed (LOCK_EX) by the container's monitor for its whole life; the
                                     container's intermediate process inherits it, so it is free exactly
                                     when nothing of the container is left
    RUNROOT/names/NAME -> ID         a symlink; created and reclaimed under an flock on RUNROOT/names/.lock,
                                     so two `--name web` at the same instant cannot both win

RUNROOT is $XDG_RUNTIME_DIR/pirun, a tmpfs: records go at reboot, as the containers do. Records are marshal
dicts: the one serialisation Python reads without an import (json costs 10 ms, as much as `pirun exec`'s
whole budget); `pirun inspect` shows them as JSON.

Truth comes from the kernel: `running` is "the lock is held" and a PID is only used after its start time in
/proc/PID/stat matched the one recorded. A monitor killed with SIGKILL takes its container with it (parent-
death signals) and leaves a record that says "running": with the lock free, it reads as exited (137).
"""
import marshal
import os
import time

from runtime.errors import PirunError, SpecError

ID_LEN = 64
SHORT = 12


class NoSuchContainer(PirunError):
    def __init__(self, ref):
        super().__init__(f'no container with name or ID "{ref}" found: no such container',
                         fix="see pirun ps -a")


class Improper(PirunError):
    """podman's "container state improper": the command does not apply to the container as it is."""


def containers_dir(ctx):
    return f"{ctx.runroot}/containers"


def new_id():
    return os.urandom(ID_LEN // 2).hex()


def _ensure(path):
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SpecError(f"create {path}: {e.strerror}", fix="check --runroot and $XDG_RUNTIME_DIR") from None


def check_private(runroot):
    """The state directory and its parent must be this user's alone (the default without a login session
    lives under /tmp, where another user could have made the directory first): runroot owned by us, not a
    symlink, writable by nobody else; its parent ours, or root's and sticky if others may write it."""
    import stat
    uid = os.getuid()
    fix = "use --runroot DIR in a directory of your own (or log in for $XDG_RUNTIME_DIR)"
    parent = os.path.dirname(runroot.rstrip("/")) or "/"
    for path, is_parent in ((parent, True), (runroot, False)):
        try:
            st = os.lstat(path)
        except OSError as e:
            raise SpecError(f"state directory {path}: {e.strerror}", fix=fix) from None
        if stat.S_ISLNK(st.st_mode) and not is_parent:
            raise SpecError(f"state directory {path} is a symbolic link", fix=fix)
        owner_ok = st.st_uid == uid or (is_parent and st.st_uid == 0)
        others_write = st.st_mode & 0o022
        if not owner_ok or (others_write and not (is_parent and st.st_uid == 0 and st.st_mode & stat.S_ISVTX)):
            raise SpecError(f"state directory {path} is not private to uid {uid} (owner {st.st_uid}, mode "
                            f"{oct(st.st_mode & 0o7777)[2:]})", fix=fix)


def write_record(path, data):
    """Atomically replace `path` with the marshalled dict `data` (temp file in the same directory + rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, marshal.dumps(data))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_record(path):
    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


def lock_held(path):
    """True while some process holds the flock on `path` (the container's monitor or its process I)."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


class Container:
    """One container's record as read now; `running` comes from the lock."""

    def __init__(self, ctx, cid):
        self.ctx = ctx
        self.id = cid
        self.dir = f"{containers_dir(ctx)}/{cid}"
        self.config = read_record(f"{self.dir}/config") or {}
        self.state = read_record(f"{self.dir}/state") or {}
        self.running = lock_held(f"{self.dir}/lock")

    @property
    def name(self):
        return self.config.get("name", "")

    @property
    def status(self):
        """created | running | exited, as the kernel has it."""
        recorded = self.state.get("status", "created")
        if self.running:
            return recorded
        if recorded == "running":
            return "exited"                 # the monitor was killed: the kernel killed the container with it
        return recorded

    @property
    def exit_code(self):
        if self.status != "exited":
            return None
        code = self.state.get("exit_code")
        return 137 if code is None else code

    def pid(self):
        """Host PID of the container's PID 1 if it is the process that was recorded and it runs, else None."""
        return self._verified("pid")

    def monitor_pid(self):
        return self._verified("monitor_pid")

    def _verified(self, key):
        pid = self.state.get(key)
        if not self.running or not pid or start_time(pid) != self.state.get(key + "_start"):
            return None
        return pid

    def pidfd(self, key="pid"):
        """A pidfd for the recorded process, checked against its start time after opening (so a recycled PID
        is never signalled), or None."""
        pid = self.state.get(key)
        if not self.running or not pid:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if start_time(pid) != self.state.get(key + "_start"):
            os.close(fd)
            return None
        return fd

    def update(self, **changes):
        """Read-modify-write of the state record, under the container's lock (its monitor; `pirun
        healthcheck run` adds health results)."""
        with self.locked():
            state = self.reload()
            state.update(changes)
            self.write_state(state)

    def locked(self):
        """An flock on the container's directory for a read-modify-write of its state record."""
        return _DirLock(self.dir)

    def reload(self):
        self.state = read_record(f"{self.dir}/state") or {}
        return self.state

    def write_state(self, state):
        write_record(f"{self.dir}/state", state)
        self.state = state


class _DirLock:
    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# --- names --------------------------------------------------------------------------------------------------
def names_dir(ctx):
    return f"{ctx.runroot}/names"


class _NamesLock:
    def __init__(self, ctx):
        self.path = f"{names_dir(ctx)}/.lock"

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def valid_name(name):
    ok = (0 < len(name) <= 128 and name[0].isascii() and name[0].isalnum()
          and all(c.isascii() and (c.isalnum() or c in "_.-") for c in name))
    if not ok:
        raise SpecError(f"--name {name!r}: names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                        fix="choose another name")
    return name


def _claim(ctx, name, cid):
    """Point names/NAME at cid; a name whose container record is gone is reclaimed. Under the names lock."""
    link = f"{names_dir(ctx)}/{name}"
    with _NamesLock(ctx):
        try:
            os.symlink(cid, link)
            return
        except FileExistsError:
            pass
        try:
            other = os.readlink(link)
        except OSError:
            other = ""
        if other and os.path.isdir(f"{containers_dir(ctx)}/{other}"):
            raise SpecError(f'the container name "{name}" is already in use by {other[:SHORT]}',
                            fix=f"choose another name, or remove that container: pirun rm {name}")
        os.unlink(link)                             # debris of a removed or never-finished container
        os.symlink(cid, link)


def release_name(ctx, name, cid):
    link = f"{names_dir(ctx)}/{name}"
    with _NamesLock(ctx):
        try:
            if os.readlink(link) == cid:
                os.unlink(link)
        except OSError:
            pass


_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nifty", "proud",
               "quiet", "sharp", "swift", "tender", "vivid", "wise", "zen")
_NOUNS = ("ant", "bee", "crane", "dove", "eagle", "fox", "gull", "hare", "ibis", "jay", "kite", "lynx", "mole",
          "newt", "owl", "pika", "quail", "robin", "seal", "tern", "vole", "wren", "yak")


def generated_name(cid):
    b = bytes.fromhex(cid[:8])
    return f"{_ADJECTIVES[b[0] % len(_ADJECTIVES)]}_{_NOUNS[b[1] % len(_NOUNS)]}_{cid[:4]}"


# --- create, find, remove --------------------------------------------------------------------------------------
def create(ctx, cid, name, config):
    """Make the record of a new container, take its lock and its name. Returns (Container, lock fd): the lock
    is held by whoever runs the container (inherited by the monitor across fork). The directory is made
    under a temporary name and renamed into place once complete: a reader never sees half a record."""
    import fcntl
    base = containers_dir(ctx)
    _ensure(ctx.runroot)
    check_private(ctx.runroot)
    _ensure(base)
    _ensure(names_dir(ctx))
    sweep(ctx)
    tmp = f"{base}/.new-{cid}-{os.getpid()}"
    os.mkdir(tmp, 0o700)
    lock = os.open(f"{tmp}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_record(f"{tmp}/config", dict(config, id=cid, name=name))
        write_record(f"{tmp}/state", {"status": "created"})
        os.rename(tmp, f"{base}/{cid}")
    except BaseException:
        _rmflat(tmp)
        os.close(lock)
        raise
    try:
        _claim(ctx, name, cid)
    except BaseException:
        _remove_dir(ctx, cid)
        os.close(lock)
        raise
    return Container(ctx, cid), lock


def all_ids(ctx):
    try:
        return sorted(e for e in os.listdir(containers_dir(ctx)) if len(e) == ID_LEN)
    except OSError:
        return []


def load_all(ctx):
    return [Container(ctx, cid) for cid in all_ids(ctx)]


def lookup(ctx, ref):
    """A container by name, full ID or unique ID prefix; NoSuchContainer otherwise."""
    if not ref or "/" in ref or ref.startswith("."):
        raise NoSuchContainer(ref)
    try:
        cid = os.readlink(f"{names_dir(ctx)}/{ref}")
        if os.path.isdir(f"{containers_dir(ctx)}/{cid}"):
            return Container(ctx, cid)
    except OSError:
        pass
    if len(ref) == ID_LEN and os.path.isdir(f"{containers_dir(ctx)}/{ref}"):
        return Container(ctx, ref)
    if len(ref) >= 3 and all(c in "0123456789abcdef" for c in ref):
        matches = [cid for cid in all_ids(ctx) if cid.startswith(ref)]
        if len(matches) == 1:
            return Container(ctx, matches[0])
        if len(matches) > 1:
            raise SpecError(f'more than one container starts with "{ref}"', fix="give more of the ID, or the name")
    raise NoSuchContainer(ref)


def remove(ctx, c):
    """Remove a container's record, name and log (the caller made sure nothing of it runs). The record goes
    last: a log directory without a record is debris for sweep()."""
    release_name(ctx, c.name, c.id)
    log = c.config.get("log_path")
    if log:
        from runtime.lifecycle import logs
        logs.remove(log)
    _remove_dir(ctx, c.id)


def _remove_dir(ctx, cid):
    """Rename the directory out of the way first (one atomic step: the container is gone for every reader),
    then delete its few files."""
    d = f"{containers_dir(ctx)}/{cid}"
    trash = f"{containers_dir(ctx)}/.rm-{cid}-{os.getpid()}"
    try:
        os.rename(d, trash)
    except OSError:
        return
    _rmflat(trash)


def _rmflat(d):
    try:
        for name in os.listdir(d):
            try:
                os.unlink(f"{d}/{name}")
            except OSError:
                pass
        os.rmdir(d)
    except OSError:
        pass


def sweep(ctx):
    """Remove what a pirun process killed mid-way leaves: directories being made (.new-ID-PID) or removed
    (.rm-ID-PID) by a process that is gone, and log directories of containers without a record (a record is
    made before its log directory and removed after it)."""
    base = containers_dir(ctx)
    try:
        entries = os.listdir(base)
    except OSError:
        entries = []
    for e in entries:
        if e.startswith((".rm-", ".new-")):
            pid = e.rsplit("-", 1)[-1]
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                _rmflat(f"{base}/{e}")
    logs_dir = f"{ctx.root}/logs"
    try:
        logs = os.listdir(logs_dir)
    except OSError:
        return
    for e in logs:
        if len(e) == ID_LEN and not os.path.exists(f"{base}/{e}"):
            _rmflat(f"{logs_dir}/{e}")


def now():
    return time.time()
