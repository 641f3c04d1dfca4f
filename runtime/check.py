"""`run.py --check`: can the invoking user run rootless containers on this host, and if not, what fixes it?

Run it as the user who will run containers. One line per prerequisite, then a summary:

    ok|missing|warn  <item>  <detail>[; fix: role <ansible role>, or by hand: <exact command>]

`ok` the prerequisite is there; `missing` it is not; `warn` it is there but degraded, or a nice-to-have is
absent. A `missing` item marked `(optional)` does not count. Exit status 0 when every required item is ok,
else 1; bad arguments are one `check: error:` line and 125.

Every item asks the code a run uses, so that "check says ok" means "run.py works":

  config      /etc/pirun/pirun.conf (or $PIRUN_CONFIG) parses (hostconfig.load); absent means defaults
  user        who is checked (a warn when root: the report then describes root, not the container user)
  sysctls     kernel.unprivileged_userns_clone = 1, user.max_user_namespaces > 0,
              kernel.apparmor_restrict_unprivileged_userns = 0 (each only where the kernel has it)
  userns      a forked child really unshares CLONE_NEWUSER (catches seccomp, LSMs, nesting limits)
  newuidmap,  the binaries runtime/tools.py finds (the ones run.py executes): setuid root, or with the
  newgidmap   cap_setuid / cap_setgid file capability, not on a nosuid mount
  subuid,     the user's ranges as idmap.subid_ranges reads them (by name or uid); warn below 65536 ids
  subgid
  idmap       idmap.write_maps, run.py's own function, maps that child: ok when the user is 0 and 1..N map
              onto the ranges; missing when run.py would fall back to mapping only the user (it runs, but
              images with files of other owners break: we want that fixed, not tolerated)
  slirp4netns the network helpers as the network backends find them (runtime/tools.py, the caller's $PATH
  pasta       first). The default network (`net` in the config, else slirp4netns) is required; the other is
              a warn; with `net = none` or `host` neither is required
  /dev/net/tun  openable read-write, and a tap device can be created in a user+net namespace (what
              slirp4netns and pasta do); required with a user-mode default network
  net.ipv4.ping_group_range  covers one of the user's groups (ping from inside); a warn
  cgroup2     the unified cgroup v2 hierarchy, read as the cgroup manager reads it (cgroup/discover.py)
  cgroup controllers  the cgroup manager (runtime/cgroup) creates a test cgroup with --memory, --pids and
              --cpus limits and moves a process into it, in a forked child, exactly as for a run, then
              removes it; a warn when only --cpus/--cpu-weight fail. Resource limits are optional in pirun
              (without a usable cgroup, containers run unlimited and asking for a limit is an error), so both
              cgroup items are optional unless the host config asks for cgroups (`pids_limit` or
              `cgroup_base`, as hosts provisioned by the pirun_runtime role do): then every run needs one.
  linger      systemd hosts: without `loginctl enable-linger`, containers die at logout; a warn
  rootfs      the default rootfs (config, else REPO/rootfs_arm on aarch64, else REPO/rootfs_host) or --rootfs:
              present, readable, /bin/sh inside (resolved inside the rootfs, as run.py resolves paths) of an
              architecture this host runs: natively, or through binfmt_misc with the F flag (the interpreter
              must be opened at registration, it cannot be found inside the container); a busybox rootfs
              is really run.

Each fix names the Ansible role that fixes it (pirun_prereqs: packages, sysctls, subordinate ids, tun,
linger; pirun_cgroup: cgroup v2, delegation; pirun_runtime: pirun itself, its config and rootfs) and the
command that fixes it by hand. Not on run.py's start-up path: imports whatever it needs.
"""
import os
import pwd
import stat
import subprocess
import sys

from runtime import arch, hostconfig, idmap, sync, tools
from runtime import rootfs as rootfs_mod
from runtime.net import default_mode
from runtime.errors import PirunError, SpecError

OK, MISSING, WARN = "ok", "missing", "warn"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROC_SYS = "/proc/sys"
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


# ---------------------------------------------------------------- the namespace probe (real, forked)
# The child speaks the launcher's sync protocol: USERNS once it has unshared its user namespace, then it waits
# for MAPPED while the parent runs idmap.write_maps on it, as the launcher does for process I. Then it reports
# what it sees with the probe's own message kinds.

P_FAILED = b"FAILED"      # <- step errno: a step of the child failed (userns, netns)
P_MAPS = b"MAPS"          # <- uid_map gid_map: the maps as the child reads them
P_NETNS = b"NETNS"        # <- the child unshared a network namespace
P_TUN = b"TUN"            # <- errno at: creating a tap device (errno 0: it worked)


def _probe_child(chan):
    """In the forked child: never returns."""
    code = 0
    try:
        from runtime import libc
        try:
            libc.unshare(libc.CLONE_NEWUSER)
        except PirunError as e:
            chan.send(P_FAILED, "userns", getattr(e, "errno", 0) or 1)
            os._exit(1)
        chan.send(sync.USERNS)
        chan.expect(sync.MAPPED, "wait for the ID maps")
        chan.send(P_MAPS, read_text("/proc/self/uid_map") or "", read_text("/proc/self/gid_map") or "")
        try:
            libc.unshare(libc.CLONE_NEWNET)
        except PirunError as e:
            chan.send(P_FAILED, "netns", getattr(e, "errno", 0) or 1)
            os._exit(0)
        chan.send(P_NETNS)
        import fcntl
        import struct
        at = "open"
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            at = "TUNSETIFF"
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"tap0", IFF_TAP | IFF_NO_PI))
            os.close(fd)
            chan.send(P_TUN, 0, at)
        except OSError as e:
            chan.send(P_TUN, e.errno, at)
    except BaseException:               # noqa: BLE001 - the parent sees the channel close early
        code = 2
    os._exit(code)


def probe_namespaces(uid, gid, user, timeout=10.0):
    """Fork a child that unshares a user namespace; map it with idmap.write_maps (run.py's function); let it
    unshare a network namespace and create a tap device. Returns a dict of what happened:
    userns/netns: errno (0: worked), idmap: None (full mapping), run.py's fallback warning, or an error line;
    maps: (uid_map, gid_map) as the child read them; tun: (errno, step); timeout: True when the child hung."""
    result = {}
    parent, child = sync.Channel.pair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        parent.close()
        _probe_child(child)
    child.close()
    parent.sock.settimeout(timeout)
    try:
        while True:
            kind, fields, _ = parent.recv()
            if kind is None:
                break
            if kind == sync.USERNS:
                result["userns"] = 0
                try:
                    mapping = idmap.write_maps(pid, uid, gid, user)
                    result["idmap"] = mapping.warning
                except PirunError as e:
                    result["idmap"] = e.line()
                parent.send(sync.MAPPED)
            elif kind == P_FAILED:
                result[fields[0]] = int(fields[1])
            elif kind == P_MAPS:
                result["maps"] = (fields[0], fields[1])
            elif kind == P_NETNS:
                result["netns"] = 0
            elif kind == P_TUN:
                result["tun"] = (int(fields[0]), fields[1])
    except TimeoutError:
        result["timeout"] = True
    except OSError:
        pass                            # the child is gone: what it said is in result
    finally:
        parent.close()
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    return result


# ---------------------------------------------------------------- the cgroup trial (real, forked)
# The cgroup manager itself, each trial in a fresh forked child, as each run is a fresh run.py (a run moves
# run.py into a scope or a leaf of its own; the check process stays where it is): create the test cgroup
# with limits, fork a process and move it in (as for process I), remove everything again. One placement cannot
# be reproduced from a child: run.py alone in a delegated cgroup uses that cgroup itself (the manager's "own"
# mode), while the trial child shares it with the check process and is placed as a run from a shared cgroup
# would be (a transient scope on systemd hosts).

C_LEAF = b"LEAF"          # <- leaf base available: create() and add() worked
C_NOLEAF = b"NOLEAF"      # <- message fix: the CgroupError (or other PirunError) a run would get


def _trials():
    from runtime.spec import Limits
    mib = 1 << 20
    return (("memory pids cpu", Limits(memory=64 * mib, pids=64, cpus=1.0)),
            ("memory pids", Limits(memory=64 * mib, pids=64)))


def _trial_child(chan, cfg, limits, probe, fs):
    from runtime.cgroup import CgroupManager
    mgr = CgroupManager(limits, cfg, True, probe=probe, fs=fs)
    worker = hold_w = None
    try:
        mgr.create()
        hold_r, hold_w = os.pipe()
        worker = os.fork()              # after create(), as the launcher forks process I
        if worker == 0:
            os.close(hold_w)
            os.read(hold_r, 1)
            os._exit(0)
        os.close(hold_r)
        mgr.add(worker)
        base = mgr.state.base.path
        available = " ".join((mgr.state.fs.read(f"{base}/cgroup.controllers") or "").split())
        chan.send(C_LEAF, mgr.leaf, base, available)
    except PirunError as e:
        chan.send(C_NOLEAF, e.message, e.fix or "")
    finally:
        if hold_w is not None:
            os.close(hold_w)
        if worker is not None:
            os.waitpid(worker, 0)
        mgr.remove()


def _one_trial(cfg, limits, probe, fs, timeout):
    parent, child = sync.Channel.pair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        parent.close()
        code = 0
        try:
            _trial_child(child, cfg, limits, probe, fs)
        except BaseException as e:      # noqa: BLE001 - reported to the parent
            code = child.send_error(e)
        os._exit(code)
    child.close()
    parent.sock.settimeout(timeout)
    try:
        kind, fields, _ = parent.recv()
    except OSError:                     # timeout: the manager hung (D-Bus?); a later run removes the leaf
        kind, fields = None, []
        os.kill(pid, 9)
    finally:
        parent.close()
        os.waitpid(pid, 0)
    if kind == C_LEAF:
        return fields[0], fields[1], fields[2]
    if kind == C_NOLEAF:
        return None, fields[0], fields[1]
    if kind == sync.ERROR:
        e = sync.error_from_fields(fields)
        return None, e.message, e.fix or ""
    return None


def cgroup_trial(cfg, probe=None, fs=None, timeout=30.0):
    """[(controllers, leaf, base, available) | (controllers, None, message, fix)]: what the cgroup manager did
    for each trial, in order, stopping at the first that worked; shorter when a child did not report."""
    out = []
    for names, limits in _trials():
        got = _one_trial(cfg, limits, probe, fs, timeout)
        if got is None:
            break
        out.append((names,) + got)
        if got[0] is not None:
            break
    return out


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
        self.net = net or (self.cfg.net if self.cfg else None) or default_mode(environ=os.environ)
        self.cgroups_required = cgroups_required(self.cfg)
        if rootfs:
            self.rootfs = os.path.abspath(rootfs)
        else:
            self.rootfs = hostconfig.default_rootfs(REPO, self.cfg)
        # what idmap.write_maps reads and runs, through the same functions
        self.subuid_text = read_text(idmap.SUBUID)
        self.subgid_text = read_text(idmap.SUBGID)
        self.uid_ranges = idmap.subid_ranges(idmap.SUBUID, self.user, self.uid)
        self.gid_ranges = idmap.subid_ranges(idmap.SUBGID, self.user, self.uid)
        self.newuidmap = tools.find("newuidmap")
        self.newgidmap = tools.find("newgidmap")


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
    err = probe.get("userns")
    if err == 0:
        return Item(OK, "userns", "a forked child unshared CLONE_NEWUSER")
    if err is None:
        return Item(MISSING, "userns", "the test child did not report (timeout or crash)",
                    fix=fix("pirun_prereqs", "run the check again; if it persists, unshare -U true shows why"))
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


def check_idmap(host, probe, items):
    """What idmap.write_maps did to the probe child: the full mapping, or run.py's fallback and its warning."""
    if probe.get("userns") != 0:
        return Item(MISSING, "idmap", "not tested: no user namespace (see userns)", fix="see the userns line")
    if "idmap" not in probe:
        return Item(MISSING, "idmap", "the test child did not report (timeout or crash)",
                    fix=fix("pirun_prereqs", "run the check again"))
    warning = probe["idmap"]
    if warning is None:
        uid_map = " / ".join(" ".join(line.split()) for line in (probe.get("maps") or ("", ""))[0].splitlines())
        return Item(OK, "idmap", f"run.py's ID mapping of a test namespace: uid_map {uid_map}")
    detail = warning.split("; fix: ", 1)[0]
    broken = [i.name for i in items if i.name in ("newuidmap", "newgidmap", "subuid", "subgid")
              and i.status == MISSING]
    if broken:
        how = f"see the {', '.join(broken)} line{'s' if len(broken) > 1 else ''}"
    else:
        how = fix("pirun_prereqs", "give the user ranges in /etc/subuid and /etc/subgid that are its own and do "
                  "not overlap other users' (newuidmap refuses others), e.g. usermod --add-subuids "
                  f"{free_subid_start(host.subuid_text)}-{free_subid_start(host.subuid_text) + RECOMMENDED_IDS - 1}"
                  f" {host.user}")
    return Item(MISSING, "idmap", f"run.py would map only the user: {detail}", fix=how)


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
        path = tools.find(name)             # the network backends' lookup: the caller's $PATH first
        required = name == required_helper
        if path:
            items.append(Item(OK, name, f"{path}: {_version(path, name)}", required=required))
            continue
        if required:
            other = "pasta" if name == "slirp4netns" else "slirp4netns"
            how = fix("pirun_prereqs", f"apt-get install {package} (or set net = {other} in "
                      f"{hostconfig.config_path()[0]} if {other} is installed)")
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
        why = (f"unshare(CLONE_NEWNET) failed: {os.strerror(netns)}" if netns
               else "the user namespace test did not get that far")
        return Item(MISSING, path, f"opens, but the tap test did not run: {why}", required=required,
                    fix="see the userns line")
    err, at = tun
    if err:
        return Item(MISSING, path, f"opens, but {at} of a tap device in a user+net namespace failed: "
                    f"{os.strerror(err)}", fix=how, required=required)
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


def cgroup_fix(text):
    """A cgroup fix as the report shows it: the manager's own fix, under the role that provides it."""
    if not text:
        return fix("pirun_cgroup", "see runtime/cgroup/__init__.py for where containers' cgroups come from")
    return text if "pirun_cgroup" in text else fix("pirun_cgroup", text)


def check_cgroups(host, probe=None, fs=None):
    """The cgroup2 line from what cgroup/discover reads; the controllers line from the cgroup manager itself
    (cgroup_trial). probe/fs: a discover.Probe and a CgroupFS, injectable to describe a fake host."""
    from runtime.cgroup import discover
    required = host.cgroups_required
    if required:
        keys = [k for k in ("pids_limit", "cgroup_base") if getattr(host.cfg, k, None) is not None]
        why_optional = f" (required: {host.cfg.path} sets {' and '.join(keys)})"
    else:
        why_optional = ": containers run without resource limits, asking for one fails"
    if probe is None:
        probe = discover.Probe(fs)
    mount = discover.cgroup2_mount(probe.mountinfo())
    v2, v1 = discover.parse_proc_cgroup(probe.proc_cgroup())
    trials = cgroup_trial(host.cfg, probe, fs)
    failures = [t for t in trials if t[1] is None]
    first_fix = cgroup_fix(failures[0][3] if failures else discover.ROLE_FIX)

    items = []
    bound = sorted(c for c in NEEDED_CONTROLLERS if c in v1)
    if mount is None or v2 is None:
        items.append(Item(MISSING, "cgroup2", "no cgroup2 hierarchy mounted" + why_optional, fix=first_fix,
                          required=required))
    elif bound:
        items.append(Item(MISSING, "cgroup2", f"hybrid hierarchy: {', '.join(sorted(v1))} bound to cgroup v1, "
                          f"cgroup2 at {mount} without them" + why_optional, fix=first_fix, required=required))
    elif v1:
        items.append(Item(OK, "cgroup2", f"cgroup2 at {mount} (cgroup v1 holds {', '.join(sorted(v1))})",
                          required=required))
    else:
        items.append(Item(OK, "cgroup2", f"unified hierarchy at {mount}", required=required))

    name = "cgroup controllers"
    worked = [t for t in trials if t[1] is not None]
    if not trials:
        items.append(Item(MISSING, name, "the cgroup test did not report (timeout or crash)" + why_optional,
                          fix=fix("pirun_cgroup", "run the check again"), required=required))
    elif worked and not failures:
        _names, _leaf, base, available = worked[0]
        items.append(Item(OK, name, f"{base}: {available}; a test cgroup took --memory, --pids and --cpus "
                          "limits and a process", required=required))
    elif worked:
        _names, _leaf, base, available = worked[0]
        items.append(Item(WARN, name, f"{base}: {available}; --memory and --pids work, --cpus and --cpu-weight "
                          f"fail: {failures[0][2]}", fix=cgroup_fix(failures[0][3]), required=False))
    else:
        _names, _none, message, how = failures[-1]
        items.append(Item(MISSING, name, message + why_optional, fix=cgroup_fix(how), required=required))
    return items


def check_linger(host, probe=None):
    from runtime.cgroup import discover
    if host.uid == 0 or not (probe or discover.Probe()).systemd_booted():
        return []      # not a systemd host (or root): nothing to linger
    if os.path.exists(f"/var/lib/systemd/linger/{host.user}"):
        return [Item(OK, "linger", f"enabled for {host.user}", required=False)]
    return [Item(WARN, "linger", f"not enabled for {host.user}: containers and their cgroups die at logout",
                 fix=fix("pirun_prereqs", f"loginctl enable-linger {host.user}"), required=False)]


def check_rootfs(host):
    path = host.rootfs
    build = hostconfig.rootfs_build_command(REPO, path)
    if not os.path.isdir(path):
        return Item(MISSING, "rootfs", f"{path}: no such directory",
                    fix=f"role pirun_runtime, or by hand: {build}")
    if not os.access(path, os.R_OK | os.X_OK):
        return Item(MISSING, "rootfs", f"{path}: not readable by {host.user}",
                    fix=f"role pirun_runtime, or by hand: chown -R {host.user} {path}")
    shell_arch = arch.elf_arch_in_root(path, "/bin/sh")
    if shell_arch is None:
        return Item(MISSING, "rootfs", f"{path}: no executable /bin/sh of a known architecture",
                    fix=f"role pirun_runtime, or by hand: {build} --force")
    host_arch = os.uname().machine
    marker = rootfs_mod.read_marker(path)
    what = f"{path} ({marker.get('kind', 'rootfs')}, {shell_arch}"
    compat = arch.COMPAT_ABI.get(host_arch) == shell_arch     # a 32-bit userland the kernel runs itself
    if shell_arch == host_arch:
        how = "native"
    elif compat:
        how = "native 32-bit (the kernel's compat ABI)"
    else:
        registered, enabled, flags, interp = arch.binfmt_entry(shell_arch)
        qemu = arch.ARCHES[shell_arch][3]
        binfmt_fix = fix("pirun_prereqs", f"apt-get install qemu-user-static binfmt-support && "
                         f"update-binfmts --enable qemu-{qemu}")
        if not registered:
            return Item(MISSING, "rootfs", f"{what}): {shell_arch} binaries cannot run on this {host_arch} host "
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
        if ran != shell_arch and not (compat and ran == host_arch):    # uname -m names the kernel
            return Item(MISSING, "rootfs", f"{what}): running its busybox gave {ran or err!r}",
                        fix=fix("pirun_prereqs", "apt-get install qemu-user-static binfmt-support"))
        how += f", runs: uname -m = {ran}"
    return Item(OK, "rootfs", f"{what}, {how})")


def collect(host):
    items = [host.cfg_item]
    items += check_user(host)
    sysctls = check_userns_sysctls()
    items += sysctls
    probe = probe_namespaces(host.uid, host.gid, host.user)
    items.append(check_userns(probe, sysctls))
    items += check_idmap_tools(host)
    items += check_subids(host)
    items.append(check_idmap(host, probe, items))
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
