"""`run.py --check`: is this host ready to run rootless containers for the invoking user?

One line per prerequisite, checked as the user who runs it (run it as the user who will run containers):

    ok|missing|warn  <item>  <detail>[; fix: role <ansible role>, or by hand: <exact command>]

`ok` the prerequisite is there; `missing` it is not; `warn` it is there but degraded, or a nice-to-have is
absent. Items marked `(optional)` do not count for the exit status. The last line sums up.

What is checked, and whether it is required (exit status 0 only when every required item is ok, else 1;
bad arguments raise SpecError, which run.py turns into its one-line error and 125):

  required  kernel.unprivileged_userns_clone = 1 (Debian kernels; only where the sysctl exists)
  required  user.max_user_namespaces > 0
  required  kernel.apparmor_restrict_unprivileged_userns = 0 (Ubuntu >= 23.10; only where it exists)
  required  userns: a forked child really unshares CLONE_NEWUSER (catches seccomp, LSMs, nesting limits)
  required  newuidmap, newgidmap: present, and setuid root or with cap_setuid / cap_setgid file capabilities
            (security.capability xattr), not on a nosuid mount
  required  subuid, subgid: ranges for the user (by name or uid); warn below 65536 ids
  required  idmap: newuidmap/newgidmap really map 0 -> user and 1..N -> the ranges on that test namespace
            (run.py would fall back to a single mapping, but images with other owners then break: podman
            calls it "might break some images"; we want it fixed, not tolerated)
  required  the default network helper: run.py's default --net is the config's `net`, else slirp4netns;
            that helper must be present. The other helper is a warn item. With `net = none|host` neither is
            required. (The issue's "slirp4netns or pasta": we require the one run.py will actually start, so
            a host with only pasta passes once the config says `net = pasta`.)
  required  /dev/net/tun: openable read-write by the user, and a tap device can be created in a user+net
            namespace (what slirp4netns and pasta do); required together with the network helper
  warn      net.ipv4.ping_group_range covers one of the user's groups (ping from inside; nothing else)
  optional  cgroup2 (unified hierarchy at /sys/fs/cgroup) and cgroup controllers (memory, pids, cpu
            delegated to the user, writable): resource limits are optional in pirun. A host without cgroup v2
            runs containers without limits; asking for a limit there is an error (never a silent no-op). So
            these items are reported as `missing` but do not fail the check, UNLESS the host config asks for
            cgroups (`pids_limit` or `cgroup_base` set): then run.py applies limits by default and they are
            required. On this hybrid-cgroup build machine (v1 memory, no systemd) the cgroup lines therefore
            say `missing (optional)` and, by themselves, do not make the exit status non-zero.
            Hosts provisioned by the roles get `pids_limit` from pirun_runtime, so there they are required.
            On a host without systemd with `cgroup_base`, `cgroup placement` also checks that this session
            may move containers into it (it runs inside the base, or may write the common ancestor).
  warn      linger (systemd hosts only): without `loginctl enable-linger`, containers die at logout
  required  rootfs: the default (config, else REPO/rootfs_arm on aarch64, else REPO/rootfs_host) or
            --rootfs; present, readable, /bin/sh inside, its architecture runnable here: native, or a foreign
            architecture through binfmt_misc with the F flag (the interpreter must be opened at registration,
            since it cannot be found inside the container's rootfs); a busybox rootfs is really run.
  required  config: /etc/pirun/pirun.conf (or $PIRUN_CONFIG) parses (absent is fine: defaults)
  warn      user: running as root (the report then describes root, not the container user)

Each fix names the Ansible role that fixes it (pirun_prereqs: packages, sysctls, subordinate ids, tun,
linger; pirun_cgroup: cgroup v2, delegation; pirun_runtime: pirun itself, its config and rootfs) and the
command that fixes it by hand. Not on the hot path: imports whatever it needs.
"""
import json
import os
import pwd
import select
import shutil
import stat
import subprocess
import sys

from runtime import hostconfig
from runtime import rootfs as rootfs_mod
from runtime.errors import PirunError, SpecError

OK, MISSING, WARN = "ok", "missing", "warn"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROC_SYS = "/proc/sys"
CGROUP_ROOT = "/sys/fs/cgroup"
WANTED_CONTROLLERS = ("memory", "pids", "cpu")
NEEDED_CONTROLLERS = ("memory", "pids")       # without cpu: --cpus/--cpu-weight unavailable, a warn
RECOMMENDED_IDS = 65536
CAP_SETGID, CAP_SETUID = 6, 7
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
USAGE = "usage: run.py --check [--rootfs DIR] [--net MODE]"


class Item:
    __slots__ = ("status", "name", "detail", "fix", "required")

    def __init__(self, status, name, detail, fix=None, required=True):
        self.status = status
        self.name = name
        self.detail = detail
        self.fix = fix if status != OK else None
        self.required = required

    def failed(self):
        return self.required and self.status == MISSING

    def __repr__(self):
        return f"Item({self.status!r}, {self.name!r}, {self.detail!r}, required={self.required})"


def fix(role, command):
    return f"role {role}, or by hand: {command}"


# ---------------------------------------------------------------- rendering and the verdict

def render(items):
    width = max((len(i.name) for i in items), default=0)
    lines = []
    for i in items:
        detail = i.detail
        if not i.required and i.status == MISSING:
            detail += " (optional)"
        line = f"{i.status:<7}  {i.name:<{width}}  {detail}"
        if i.fix:
            line += f"; fix: {i.fix}"
        lines.append(line)
    return lines


def verdict(items):
    """(exit code, summary line)."""
    failed = [i.name for i in items if i.failed()]
    optional = [i.name for i in items if not i.required and i.status == MISSING]
    warned = [i.name for i in items if i.status == WARN]
    extra = []
    if optional:
        extra.append(f"optional missing: {', '.join(optional)}")
    if warned:
        extra.append(f"warnings: {', '.join(warned)}")
    tail = f" ({'; '.join(extra)})" if extra else ""
    if failed:
        n = len(failed)
        return 1, f"check: {n} required item{'s' if n > 1 else ''} missing: {', '.join(failed)}{tail}"
    return 0, f"check: every required item is ok{tail}"


# ---------------------------------------------------------------- small readers (pure where possible)

def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def sysctl_name(path):
    return path[len(PROC_SYS) + 1:].replace("/", ".")


def parse_file_caps(data):
    """(permitted capability mask, effective flag) from a security.capability xattr (vfs_cap_data), or None."""
    if data is None or len(data) < 8:
        return None
    magic = int.from_bytes(data[0:4], "little")
    revision = magic & 0xFF000000
    effective = bool(magic & 0x1)
    if revision == 0x01000000:
        permitted = int.from_bytes(data[4:8], "little")
    elif revision in (0x02000000, 0x03000000) and len(data) >= 20:
        permitted = int.from_bytes(data[4:8], "little") | (int.from_bytes(data[12:16], "little") << 32)
    else:
        return None
    return permitted, effective


def subid_ranges(text, user, uid):
    """[(start, count)] of `user` (name or uid) in the text of /etc/subuid or /etc/subgid."""
    ranges = []
    for line in (text or "").splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            ranges.append((int(parts[1]), int(parts[2])))
    return ranges


def free_subid_start(text, minimum=100000):
    """The first id after every range in the file, at least `minimum`: a non-overlapping start."""
    end = minimum
    for line in (text or "").splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            end = max(end, int(parts[1]) + int(parts[2]))
    return end


def ping_range_covers(text, gids):
    """(covered, lo, hi) for the text of net.ipv4.ping_group_range."""
    try:
        lo, hi = (int(x) for x in text.split())
    except (ValueError, AttributeError):
        return False, None, None
    return any(lo <= g <= hi for g in gids), lo, hi


def cgroup_layout(mounts_text):
    """('unified'|'hybrid'|'legacy'|'none', v1 controllers, cgroup2 mount point) from /proc/self/mounts."""
    v1 = []
    v2_at = None
    root_type = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = fields[1], fields[2], fields[3].split(",")
        if point == CGROUP_ROOT:
            root_type = fstype          # the last mount on a point is the visible one
        if fstype == "cgroup2" and (point == CGROUP_ROOT or point.startswith(CGROUP_ROOT + "/")):
            if v2_at is None or point == CGROUP_ROOT:
                v2_at = point
        elif fstype == "cgroup" and point.startswith(CGROUP_ROOT + "/"):
            v1 += [o for o in options if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")
                   and not o.startswith("name=") and "=" not in o]
    if root_type == "cgroup2":
        return "unified", sorted(set(v1)), CGROUP_ROOT
    if v1 and v2_at:
        return "hybrid", sorted(set(v1)), v2_at
    if v1:
        return "legacy", sorted(set(v1)), None
    return "none", [], v2_at


def own_cgroup(proc_cgroup_text):
    """The process's cgroup v2 path ('0::/...') or None."""
    for line in (proc_cgroup_text or "").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def delegated_base(own_path, uid, cfg_base=None):
    """The cgroup directory run.py would put containers under: the config's cgroup_base, else the
    user@UID.service subtree the process is in, else /sys/fs/cgroup/user.slice/user-UID.slice/user@UID.service."""
    if cfg_base:
        return cfg_base.rstrip("/"), "config cgroup_base"
    service = f"user@{uid}.service"
    if own_path:
        parts = own_path.strip("/").split("/")
        if service in parts:
            return os.path.join(CGROUP_ROOT, *parts[:parts.index(service) + 1]), "own user@ subtree"
    return os.path.join(CGROUP_ROOT, "user.slice", f"user-{uid}.slice", service), "systemd default"


def writable(path):
    return os.access(path, os.W_OK)


def systemd_booted():
    return os.path.isdir("/run/systemd/system")


def common_ancestor(a, b):
    from runtime.cgroup.discover import common_ancestor as ancestor
    return ancestor(a, b)


def raspberry_pi_model():
    model = read_text("/proc/device-tree/model")
    if model and "Raspberry Pi" in model:
        return model.rstrip("\0")
    return None


# ---------------------------------------------------------------- the namespace probe (real, forked)

def _send(fd, obj):
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _probe_child(to_parent, from_parent):
    """In the forked child: never returns; reports each step to the parent as one JSON line."""
    code = 0
    try:
        from runtime import libc
        try:
            libc.unshare(libc.CLONE_NEWUSER)
        except PirunError as e:
            _send(to_parent, {"step": "userns", "errno": getattr(e, "errno", 0) or 1})
            os._exit(1)
        _send(to_parent, {"step": "userns", "errno": 0})
        go = os.read(from_parent, 16)
        if go != b"go":
            os._exit(0)
        _send(to_parent, {"step": "maps", "uid_map": read_text("/proc/self/uid_map") or "",
                          "gid_map": read_text("/proc/self/gid_map") or ""})
        try:
            libc.unshare(libc.CLONE_NEWNET)
            _send(to_parent, {"step": "netns", "errno": 0})
        except PirunError as e:
            _send(to_parent, {"step": "netns", "errno": getattr(e, "errno", 0) or 1})
            os._exit(0)
        import fcntl
        import struct
        step = "open"
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            step = "TUNSETIFF"
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"tap0", IFF_TAP | IFF_NO_PI))
            os.close(fd)
            _send(to_parent, {"step": "tun", "errno": 0})
        except OSError as e:
            _send(to_parent, {"step": "tun", "errno": e.errno, "at": step})
    except BaseException:
        code = 2
    os._exit(code)


def _map_argv(tool, pid, own, ranges):
    argv = [tool, str(pid), "0", str(own), "1"]
    inside = 1
    for start, count in ranges:
        argv += [str(inside), str(start), str(count)]
        inside += count
    return argv


def probe_namespaces(uid, gid, uid_ranges, gid_ranges, newuidmap, newgidmap, timeout=10.0):
    """Fork a child that unshares a user namespace; map it with newuidmap/newgidmap (when there is something to
    map); let it unshare a network namespace and create a tap device. Returns a dict of what happened."""
    result = {"userns": None, "uidmap": None, "gidmap": None, "maps": None, "netns": None, "tun": None}
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(up_r)
        os.close(down_w)
        _probe_child(up_w, down_r)
    os.close(up_w)
    os.close(down_r)
    buf = b""
    try:
        with os.fdopen(up_r, "rb", buffering=0) as up:
            while True:
                ready, _, _ = select.select([up], [], [], timeout)
                if not ready:
                    result["timeout"] = True
                    break
                chunk = up.read(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    step = msg.pop("step")
                    result[step] = msg
                    if step == "userns":
                        if msg["errno"] == 0:
                            result["uidmap"], result["gidmap"] = _write_maps(
                                pid, uid, gid, uid_ranges, gid_ranges, newuidmap, newgidmap)
                        os.write(down_w, b"go")
    finally:
        os.close(down_w)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    return result


def _write_maps(pid, uid, gid, uid_ranges, gid_ranges, newuidmap, newgidmap):
    """(uid outcome, gid outcome): None when not attempted, "" on success, else the tool's message."""
    outcomes = []
    for tool, own, ranges in ((newuidmap, uid, uid_ranges), (newgidmap, gid, gid_ranges)):
        if not tool or not ranges:
            outcomes.append(None)
            continue
        try:
            proc = subprocess.run(_map_argv(tool, pid, own, ranges), capture_output=True, text=True,
                                  timeout=10, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        except (OSError, subprocess.TimeoutExpired) as e:
            outcomes.append(f"{tool}: {e}")
            continue
        if proc.returncode == 0:
            outcomes.append("")
        else:
            err = proc.stderr.strip().splitlines()
            outcomes.append(err[-1] if err else f"{os.path.basename(tool)} exited with {proc.returncode}")
    return tuple(outcomes)


# ---------------------------------------------------------------- the checks

def cgroups_required(cfg):
    """The cgroup items are required when the host config asks for cgroups: the cgroup manager's own rule
    (runtime.cgroup.config_asks: `pids_limit` or `cgroup_base` set), so --check and run.py agree."""
    from runtime.cgroup import config_asks
    return config_asks(cfg)


class Host:
    """Who and what is being checked."""

    def __init__(self, rootfs=None, net=None):
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.gids = sorted({os.getegid(), *os.getgroups()})
        try:
            self.user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            self.user = str(self.uid)
        self.cfg_item, self.cfg = check_config()
        self.net = net or (self.cfg.net if self.cfg else None) or "slirp4netns"
        self.cgroups_required = cgroups_required(self.cfg)
        if rootfs:
            self.rootfs = os.path.abspath(rootfs)
        else:
            self.rootfs = hostconfig.default_rootfs(REPO, self.cfg)
        self.subuid_text = read_text("/etc/subuid")
        self.subgid_text = read_text("/etc/subgid")
        self.uid_ranges = subid_ranges(self.subuid_text, self.user, self.uid)
        self.gid_ranges = subid_ranges(self.subgid_text, self.user, self.uid)
        self.newuidmap = find_tool("newuidmap")
        self.newgidmap = find_tool("newgidmap")


def find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def check_config():
    path, _explicit = hostconfig.config_path()
    try:
        cfg = hostconfig.load()
    except PirunError as e:
        return Item(MISSING, "config", e.message, fix=f"role pirun_runtime (writes it), or by hand: {e.fix}"), None
    if cfg.path is None:
        return Item(OK, "config", f"{path}: not present, defaults apply"), cfg
    keys = [k for k in ("rootfs", "cgroup_base", "net", "pids_limit") if getattr(cfg, k) is not None]
    return Item(OK, "config", f"{cfg.path}: {', '.join(keys) or 'no keys set'}"), cfg


def check_user(host):
    if host.uid == 0:
        return [Item(WARN, "user", "running as root: this report describes root, not the user who runs "
                     "containers", fix="run it as that user, e.g. runuser -u pirun -- run.py --check",
                     required=False)]
    return [Item(OK, "user", f"{host.user} (uid {host.uid}, gid {host.gid})", required=False)]


def check_userns_sysctls():
    items = []
    clone = f"{PROC_SYS}/kernel/unprivileged_userns_clone"
    value = read_text(clone)
    if value is not None:
        items.append(Item(OK if value == "1" else MISSING, sysctl_name(clone), f"= {value}",
                          fix=fix("pirun_prereqs", "sysctl -w kernel.unprivileged_userns_clone=1 && echo "
                                  "kernel.unprivileged_userns_clone=1 >> /etc/sysctl.d/60-pirun-userns.conf")))
    maxns = f"{PROC_SYS}/user/max_user_namespaces"
    value = read_text(maxns)
    if value is None:
        items.append(Item(MISSING, sysctl_name(maxns), "not present: kernel without user namespaces",
                          fix=fix("pirun_prereqs", "use a kernel built with CONFIG_USER_NS=y (Debian's and "
                                  "Raspberry Pi OS's are)")))
    else:
        good = value.isdigit() and int(value) > 0
        items.append(Item(OK if good else MISSING, sysctl_name(maxns), f"= {value}",
                          fix=fix("pirun_prereqs (add user.max_user_namespaces: 15000 to pirun_prereqs_userns_sysctls)",
                                  "sysctl -w user.max_user_namespaces=15000 && echo "
                                  "user.max_user_namespaces=15000 >> /etc/sysctl.d/60-pirun-userns.conf")))
    apparmor = f"{PROC_SYS}/kernel/apparmor_restrict_unprivileged_userns"
    value = read_text(apparmor)
    if value is not None:
        items.append(Item(OK if value == "0" else MISSING, sysctl_name(apparmor), f"= {value}",
                          fix=fix("pirun_prereqs", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 "
                                  "&& echo kernel.apparmor_restrict_unprivileged_userns=0 >> "
                                  "/etc/sysctl.d/60-pirun-userns.conf")))
    return items


def check_userns(probe, sysctl_items):
    state = probe.get("userns")
    if state and state["errno"] == 0:
        return Item(OK, "userns", "a forked child unshared CLONE_NEWUSER")
    if state is None:
        return Item(MISSING, "userns", "the test child did not report (timeout or crash)",
                    fix=fix("pirun_prereqs", "run the check again; if it persists, unshare -U true shows why"))
    err = state["errno"]
    blocked = [i.name for i in sysctl_items if i.status == MISSING]
    if blocked:
        how = fix("pirun_prereqs", f"see the {', '.join(blocked)} line(s)")
    elif err == 28:   # ENOSPC
        how = fix("pirun_prereqs", "raise user.max_user_namespaces (sysctl -w user.max_user_namespaces=15000)")
    else:
        how = fix("pirun_prereqs", "run on the host itself: a container's seccomp policy or an LSM (AppArmor, "
                  "SELinux) forbids unshare(CLONE_NEWUSER) here")
    return Item(MISSING, "userns", f"unshare(CLONE_NEWUSER) failed: {os.strerror(err)}", fix=how)


def _tool_privilege(path, cap):
    """(ok, detail) for newuidmap/newgidmap at `path`: setuid root or file capability `cap` (+ effective)."""
    st = os.stat(path)
    try:
        nosuid = bool(os.statvfs(path).f_flag & os.ST_NOSUID)
    except OSError:
        nosuid = False
    if nosuid:
        return False, f"{path} is on a nosuid mount: neither setuid nor file capabilities take effect"
    if st.st_uid == 0 and st.st_mode & stat.S_ISUID:
        return True, f"{path}, setuid root"
    try:
        caps = parse_file_caps(os.getxattr(path, "security.capability"))
    except OSError:
        caps = None
    cap_name = "cap_setuid" if cap == CAP_SETUID else "cap_setgid"
    if caps:
        permitted, effective = caps
        if permitted & (1 << cap) and effective:
            return True, f"{path}, file capability {cap_name}+ep"
        if permitted & (1 << cap):
            return False, f"{path} has {cap_name} permitted but not effective"
    mode = stat.filemode(st.st_mode)
    return False, f"{path} is neither setuid root nor has {cap_name} ({mode}, uid {st.st_uid})"


def check_idmap_tools(host):
    items = []
    for name, path, cap in (("newuidmap", host.newuidmap, CAP_SETUID), ("newgidmap", host.newgidmap, CAP_SETGID)):
        if not path:
            items.append(Item(MISSING, name, "not found", fix=fix("pirun_prereqs", "apt-get install uidmap")))
            continue
        good, detail = _tool_privilege(path, cap)
        cap_name = "cap_setuid" if cap == CAP_SETUID else "cap_setgid"
        items.append(Item(OK if good else MISSING, name, detail,
                          fix=fix("pirun_prereqs", f"chmod u+s {path} (or setcap {cap_name}+ep {path}; "
                                  f"apt-get install --reinstall uidmap restores it)")))
    return items


def check_subids(host):
    items = []
    for name, ranges, text in (("subuid", host.uid_ranges, host.subuid_text),
                               ("subgid", host.gid_ranges, host.subgid_text)):
        start = free_subid_start(text)
        cmd = f"usermod --add-sub{name[3:]}s {start}-{start + RECOMMENDED_IDS - 1} {host.user}"
        how = fix("pirun_prereqs", cmd)
        if not ranges:
            items.append(Item(MISSING, name, f"no /etc/{name} range for {host.user} (uid {host.uid})", fix=how))
            continue
        total = sum(c for _, c in ranges)
        spans = ", ".join(f"{s}-{s + c - 1}" for s, c in ranges)
        if total < RECOMMENDED_IDS:
            items.append(Item(WARN, name, f"{host.user}: {spans} ({total} ids, fewer than {RECOMMENDED_IDS}: "
                              f"files owned by ids above {total} cannot be mapped)", fix=how))
        else:
            items.append(Item(OK, name, f"{host.user}: {spans} ({total} ids)"))
    return items


def check_idmap(host, probe):
    userns_ok = bool(probe.get("userns")) and probe["userns"]["errno"] == 0
    if not userns_ok:
        return Item(MISSING, "idmap", "not tested: no user namespace (see userns)",
                    fix="see the userns line")
    uid_out, gid_out = probe.get("uidmap"), probe.get("gidmap")
    if uid_out is None or gid_out is None:
        return Item(MISSING, "idmap", "not tested: newuidmap/newgidmap or the subordinate ranges are missing "
                    "(run.py falls back to mapping only the user)",
                    fix="see the newuidmap, newgidmap, subuid and subgid lines")
    if uid_out or gid_out:
        msg = uid_out or gid_out
        return Item(MISSING, "idmap", f"mapping the test namespace failed: {msg}",
                    fix=fix("pirun_prereqs", "check the subuid/subgid ranges are this user's and do not overlap "
                            "other users' (ranges in /etc/subuid must be owned by the user: newuidmap refuses "
                            "others)"))
    maps = probe.get("maps") or {}
    uid_map = " / ".join(" ".join(line.split()) for line in maps.get("uid_map", "").splitlines())
    return Item(OK, "idmap", f"newuidmap/newgidmap mapped a test namespace: uid_map {uid_map}")


def _version(path, name):
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL)
        first = (proc.stdout or proc.stderr).strip().splitlines()
        first = first[0] if first else ""
    except (OSError, subprocess.TimeoutExpired):
        first = ""
    if first and "unknown" not in first:
        return first
    try:   # Debian's pasta says "pasta unknown version": ask dpkg
        owner = subprocess.run(["dpkg-query", "-S", os.path.realpath(path)], capture_output=True, text=True,
                               timeout=5)
        pkg = owner.stdout.split(":")[0].strip() if owner.returncode == 0 else ""
        if pkg:
            ver = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True,
                                 timeout=5)
            if ver.returncode == 0 and ver.stdout.strip():
                return f"{name} (Debian {pkg} {ver.stdout.strip()})"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return first or f"{name} (version unknown)"


def network_required(host):
    """(required helper or None, whether /dev/net/tun is required)."""
    if host.net in ("slirp4netns", "pasta"):
        return host.net, True
    return None, False


def check_network_helpers(host):
    required_helper, _ = network_required(host)
    items = []
    for name, package in (("slirp4netns", "slirp4netns"), ("pasta", "passt")):
        path = find_tool(name)
        required = name == required_helper
        if path:
            items.append(Item(OK, name, f"{path}: {_version(path, name)}", required=required))
            continue
        if required:
            other = "pasta" if name == "slirp4netns" else "slirp4netns"
            how = fix("pirun_prereqs", f"apt-get install {package} (or set net = {other} in "
                      f"{hostconfig.DEFAULT_PATH} if {other} is installed)")
            detail = f"not found; it is run.py's default network (--net {name})"
            items.append(Item(MISSING, name, detail, fix=how, required=True))
        else:
            why = "not the default network" if required_helper else f"default network is --net {host.net}"
            items.append(Item(WARN, name, f"not found ({why}; --net {name} would fail)",
                              fix=fix("pirun_prereqs", f"apt-get install {package}"), required=False))
    return items


def check_tun(host, probe):
    _, required = network_required(host)
    path = "/dev/net/tun"
    how = fix("pirun_prereqs", "chmod 0666 /dev/net/tun; to keep it: echo 'KERNEL==\"tun\", MODE=\"0666\"' > "
              "/etc/udev/rules.d/60-pirun-tun.rules")
    try:
        st = os.stat(path)
        mode = f"{stat.filemode(st.st_mode)} uid {st.st_uid} gid {st.st_gid}"
    except OSError as e:
        return Item(MISSING, path, f"{e.strerror}", required=required,
                    fix=fix("pirun_prereqs", "modprobe tun && echo tun > /etc/modules-load.d/pirun-tun.conf"))
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return Item(MISSING, path, f"open read-write as {host.user}: {e.strerror} ({mode}); slirp4netns and "
                    "pasta cannot create their tap device", fix=how, required=required)
    tun = probe.get("tun")
    if tun is None:
        netns = probe.get("netns")
        why = (f"unshare(CLONE_NEWNET) failed: {os.strerror(netns['errno'])}" if netns and netns["errno"]
               else "the user namespace test did not get that far")
        return Item(MISSING, path, f"opens, but the tap test did not run: {why}", required=required,
                    fix="see the userns line")
    if tun["errno"]:
        return Item(MISSING, path, f"opens, but {tun.get('at', 'TUNSETIFF')} of a tap device in a user+net "
                    f"namespace failed: {os.strerror(tun['errno'])}", fix=how, required=required)
    return Item(OK, path, f"{mode}; a tap device was created in a user+net namespace", required=required)


def check_ping(host):
    name = "net.ipv4.ping_group_range"
    text = read_text(f"{PROC_SYS}/net/ipv4/ping_group_range")
    how = fix("pirun_prereqs", f"sysctl -w net.ipv4.ping_group_range='{host.gid} {host.gid}' && echo "
              f"'net.ipv4.ping_group_range = {host.gid} {host.gid}' > "
              "/etc/sysctl.d/61-pirun-ping-group-range.conf")
    if text is None:
        return Item(WARN, name, "not present", fix=how, required=False)
    covered, lo, hi = ping_range_covers(text, host.gids)
    if covered:
        return Item(OK, name, f"{lo} {hi} covers the user's groups", required=False)
    return Item(WARN, name, f"{' '.join(text.split())} does not cover gid {host.gid}: ping inside containers "
                "fails (everything else works)", fix=how, required=False)


CGROUP_FIX = ("role pirun_cgroup, or by hand: boot with systemd.unified_cgroup_hierarchy=1 (GRUB_CMDLINE_LINUX in "
              "/etc/default/grub, update-grub, reboot); on a Pi add cgroup_enable=memory to "
              "/boot/firmware/cmdline.txt")


def check_cgroups(host, mounts_text=None, proc_cgroup_text=None):
    required = host.cgroups_required
    if required:
        keys = [k for k in ("pids_limit", "cgroup_base") if getattr(host.cfg, k, None) is not None]
        why_optional = f" (required: {host.cfg.path} sets {' and '.join(keys)})"
    else:
        why_optional = ": containers run without resource limits, asking for one fails"
    if mounts_text is None:
        mounts_text = read_text("/proc/self/mounts") or ""
    layout, v1, v2_at = cgroup_layout(mounts_text)
    items = []
    if layout == "unified":
        items.append(Item(OK, "cgroup2", f"unified hierarchy at {CGROUP_ROOT}", required=required))
    else:
        if layout == "hybrid":
            detail = (f"hybrid hierarchy: cgroup v1 controllers ({', '.join(v1)}) at {CGROUP_ROOT}, cgroup2 "
                      f"only at {v2_at}")
        elif layout == "legacy":
            detail = f"cgroup v1 only ({', '.join(v1)})"
        else:
            detail = f"no cgroup2 mounted at {CGROUP_ROOT}"
        items.append(Item(MISSING, "cgroup2", detail + why_optional, fix=CGROUP_FIX, required=required))
        items.append(Item(MISSING, "cgroup controllers", "need the unified cgroup v2 hierarchy" + why_optional,
                          fix=CGROUP_FIX, required=required))
        return items

    root_controllers = (read_text(f"{CGROUP_ROOT}/cgroup.controllers") or "").split()
    if proc_cgroup_text is None:
        proc_cgroup_text = read_text("/proc/self/cgroup")
    cfg_base = host.cfg.cgroup_base if host.cfg else None
    if cfg_base:
        cfg_base = hostconfig.expand_cgroup_base(cfg_base, host.uid, host.user)
    base, how_found = delegated_base(own_cgroup(proc_cgroup_text), host.uid, cfg_base)
    pi = raspberry_pi_model()
    delegate_fix = fix("pirun_cgroup", "printf '[Service]\\nDelegate=cpu cpuset io memory pids\\n' > "
                       "/etc/systemd/system/user@.service.d/delegate.conf (mkdir -p the directory first) && "
                       "systemctl daemon-reload, then log in again")
    if "memory" not in root_controllers and pi:
        items.append(Item(MISSING, "cgroup controllers", f"{pi}: the memory controller is disabled by the "
                          f"firmware" + why_optional, required=required,
                          fix=fix("pirun_cgroup", "add cgroup_enable=memory to the line in "
                                  "/boot/firmware/cmdline.txt and reboot")))
        return items
    if not os.path.isdir(base):
        items.append(Item(MISSING, "cgroup controllers", f"no delegated cgroup {base} ({how_found})"
                          + why_optional, required=required,
                          fix=fix("pirun_cgroup", f"log in through systemd-logind (ssh/console, not su) so that "
                                  f"user@{host.uid}.service runs; loginctl enable-linger {host.user}")))
        return items
    available = (read_text(os.path.join(base, "cgroup.controllers")) or "").split()
    delegated = all(writable(os.path.join(base, f)) for f in ("", "cgroup.procs", "cgroup.subtree_control"))
    absent = [c for c in WANTED_CONTROLLERS if c not in available]
    if not delegated:
        items.append(Item(MISSING, "cgroup controllers", f"{base} ({how_found}) is not writable by "
                          f"{host.user}: not delegated" + why_optional, fix=delegate_fix, required=required))
    elif any(c in absent for c in NEEDED_CONTROLLERS):
        items.append(Item(MISSING, "cgroup controllers", f"{base}: {' '.join(available) or 'none'} (missing "
                          f"{' '.join(absent)})" + why_optional, fix=delegate_fix, required=required))
    elif absent:
        items.append(Item(WARN, "cgroup controllers", f"{base}: {' '.join(available)} (no {' '.join(absent)}: "
                          "--cpus/--cpu-weight fail)", fix=delegate_fix, required=False))
    else:
        items.append(Item(OK, "cgroup controllers", f"{base}: {' '.join(available)}", required=required))
    own = own_cgroup(proc_cgroup_text)
    if cfg_base and own is not None and not systemd_booted():
        # without systemd, run.py moves the container into cgroup_base itself: it must run inside that
        # subtree, or be allowed to write cgroup.procs of the common ancestor (the cgroup manager's rule)
        own_dir = CGROUP_ROOT + own.rstrip("/")
        anc = common_ancestor(own_dir, base)
        inside = anc == base.rstrip("/")
        if not inside and not writable(os.path.join(anc, "cgroup.procs")):
            items.append(Item(MISSING, "cgroup placement", f"this session runs in {own_dir}, outside cgroup_base "
                              f"{base}; moving containers there needs write access to {anc}/cgroup.procs"
                              + why_optional, required=required,
                              fix=fix("pirun_cgroup (its session setup)", f"start run.py from a session placed "
                                      f"inside {base} (as root: echo SHELL_PID > {base}/cgroup.procs)")))
        else:
            items.append(Item(OK, "cgroup placement", f"this session may move containers into {base}",
                              required=required))
    return items


def check_linger(host):
    if host.uid == 0 or not os.path.isdir("/run/systemd/system"):
        return []      # not a systemd host (or root): nothing to linger
    if os.path.exists(f"/var/lib/systemd/linger/{host.user}"):
        return [Item(OK, "linger", f"enabled for {host.user}", required=False)]
    return [Item(WARN, "linger", f"not enabled for {host.user}: containers and their cgroups die at logout",
                 fix=fix("pirun_prereqs", f"loginctl enable-linger {host.user}"), required=False)]


# The 32-bit ABI a 64-bit kernel runs natively (uname -m of its binaries); the seccomp filter covers it too.
COMPAT_ABI = {"x86_64": "i686", "aarch64": "armv7l"}


def check_rootfs(host):
    path = host.rootfs
    build = hostconfig.rootfs_build_command(REPO, path)
    if not os.path.isdir(path):
        return Item(MISSING, "rootfs", f"{path}: no such directory",
                    fix=f"role pirun_runtime, or by hand: {build}")
    if not os.access(path, os.R_OK | os.X_OK):
        return Item(MISSING, "rootfs", f"{path}: not readable by {host.user}",
                    fix=f"role pirun_runtime, or by hand: chown -R {host.user} {path}")
    shell = rootfs_mod.resolve_in_root(path, "/bin/sh")
    arch = rootfs_mod.elf_arch(shell) if shell else None
    if arch is None:
        return Item(MISSING, "rootfs", f"{path}: no executable /bin/sh of a known architecture",
                    fix=f"role pirun_runtime, or by hand: {build} --force")
    host_arch = os.uname().machine
    marker = rootfs_mod.read_marker(path)
    what = f"{path} ({marker.get('kind', 'rootfs')}, {arch}"
    compat = COMPAT_ABI.get(host_arch) == arch       # a 32-bit userland the kernel runs itself
    if arch == host_arch:
        how = "native"
    elif compat:
        how = "native 32-bit (the kernel's compat ABI)"
    else:
        registered, enabled, flags, interp = rootfs_mod.binfmt_entry(arch)
        qemu = rootfs_mod.ARCHES[arch][3]
        binfmt_fix = fix("pirun_prereqs", f"apt-get install qemu-user-static binfmt-support && "
                         f"update-binfmts --enable qemu-{qemu}")
        if not registered:
            return Item(MISSING, "rootfs", f"{what}): {arch} binaries cannot run on this {host_arch} host "
                        f"(no binfmt_misc entry qemu-{qemu})", fix=binfmt_fix)
        if not enabled:
            return Item(MISSING, "rootfs", f"{what}): binfmt_misc entry qemu-{qemu} is disabled", fix=binfmt_fix)
        if "F" not in flags:
            return Item(MISSING, "rootfs", f"{what}): binfmt_misc qemu-{qemu} lacks the F flag: {interp} would "
                        "be looked up inside the container", fix=binfmt_fix)
        how = f"through binfmt_misc qemu-{qemu} (flags {flags})"
    if marker.get("kind") == "busybox":
        busybox = os.path.join(path, "bin", "busybox")
        try:
            proc = subprocess.run([busybox, "uname", "-m"], capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
            ran = proc.stdout.strip()
            err = proc.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            ran, err = "", str(e)
        if ran != arch and not (compat and ran == host_arch):    # uname -m names the kernel
            return Item(MISSING, "rootfs", f"{what}): running its busybox gave {ran or err!r}",
                        fix=fix("pirun_prereqs", "apt-get install qemu-user-static binfmt-support"))
        how += f", runs: uname -m = {ran}"
    return Item(OK, "rootfs", f"{what}, {how})")


def collect(host):
    items = [host.cfg_item]
    items += check_user(host)
    sysctls = check_userns_sysctls()
    items += sysctls
    probe = probe_namespaces(host.uid, host.gid, host.uid_ranges, host.gid_ranges, host.newuidmap,
                             host.newgidmap)
    items.append(check_userns(probe, sysctls))
    items += check_idmap_tools(host)
    items += check_subids(host)
    items.append(check_idmap(host, probe))
    items += check_network_helpers(host)
    items.append(check_tun(host, probe))
    items.append(check_ping(host))
    items += check_cgroups(host)
    items += check_linger(host)
    items.append(check_rootfs(host))
    return items


def parse_args(argv):
    opts = {"rootfs": None, "net": None}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            return None
        key, eq, value = arg.partition("=")
        if key not in ("--rootfs", "--net", "--network"):
            raise SpecError(f"--check: unknown option {arg!r}", fix=USAGE)
        if not eq:
            if not args:
                raise SpecError(f"--check: {key} needs a value", fix=USAGE)
            value = args.pop(0)
        if key in ("--net", "--network"):
            from runtime.net import BACKENDS
            if value not in BACKENDS:
                raise SpecError(f"--check: --net {value!r} is not one of {', '.join(BACKENDS)}", fix=USAGE)
            key = "--net"
        opts[key[2:]] = value
    return opts


def main(argv=()):
    """Print the report to stdout; return 0 when every required item is ok, else 1."""
    opts = parse_args(argv)
    if opts is None:
        print(USAGE)
        print(__doc__.split("\n\n", 1)[0])
        return 0
    items = collect(Host(rootfs=opts["rootfs"], net=opts["net"]))
    code, summary = verdict(items)
    out = "\n".join(render(items) + [summary]) + "\n"
    sys.stdout.write(out)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PirunError as e:
        print(f"check: error: {e.line()}", file=sys.stderr)
        sys.exit(e.exit_code)
