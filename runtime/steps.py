"""Container setup steps as data: the launcher plans them, the init side applies them in order.

`plan(spec, backend)` runs in the launcher before fork, so every step carries what it needs (file contents,
resolved host paths). `runtime.init.apply_step` applies one step with an exhaustive match.
"""
from runtime.spec import Record

# The OCI default spec's masked and read-only paths (runc/crun), plus podman's additions.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts", "/sys/firmware",
    "/sys/fs/selinux", "/sys/dev/block", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class MakeRslave(Record):
    """mount --make-rslave /: nothing we mount propagates back to the host."""
    __slots__ = ()


class BindRootfs(Record):
    """Bind the rootfs onto itself so that it is a mount point pivot_root accepts."""
    __slots__ = ("path",)


class MountOverlay(Record):
    """Mount the image's layers (and the container's writable layer) on `target`: runtime.image.overlay."""
    __slots__ = ("overlay", "target")


class MountProc(Record):
    __slots__ = ()


class MountDev(Record):
    """tmpfs /dev with the host's null, zero, full, random, urandom, tty bound in; devpts, shm, mqueue, links."""
    __slots__ = ()


class MountSys(Record):
    __slots__ = ()


class BindVolume(Record):
    __slots__ = ("host", "target", "read_only")


class WriteEtc(Record):
    """Bind a generated file over /etc/<name> (hosts, hostname, resolv.conf); the rootfs is not edited."""
    __slots__ = ("name", "content")


class PivotRoot(Record):
    __slots__ = ()


class Sysctl(Record):
    """Write a sysctl of the container's own namespaces (before /proc/sys is made read-only)."""
    __slots__ = ("name", "value")


class MaskPaths(Record):
    __slots__ = ("paths",)


class ReadOnlyPaths(Record):
    __slots__ = ("paths",)


class RemountRootReadOnly(Record):
    __slots__ = ()


class SetHostname(Record):
    __slots__ = ("name",)


class LoopbackUp(Record):
    __slots__ = ()


def plan(spec, backend):
    steps = [MakeRslave(), BindRootfs(path=spec.rootfs), MountProc(), MountDev(), MountSys()]
    if spec.overlay is not None:
        steps.insert(1, MountOverlay(overlay=spec.overlay, target=spec.rootfs))
    steps += [BindVolume(host=v.host, target=v.target, read_only=v.read_only) for v in spec.volumes]
    steps += [
        WriteEtc(name="hostname", content=spec.hostname + "\n"),
        WriteEtc(name="hosts", content=backend.hosts(spec.hostname)),
        WriteEtc(name="resolv.conf", content=backend.resolv_conf()),
        PivotRoot(),
    ]
    if backend.unshare_net:
        # As podman's default_sysctls: root in the container may ping with ICMP datagram sockets, without
        # NET_RAW. The sysctl is per network namespace: the host's setting is untouched.
        steps.append(Sysctl(name="net.ipv4.ping_group_range", value="0 0"))
    steps += [
        MaskPaths(paths=MASKED_PATHS),
        ReadOnlyPaths(paths=READONLY_PATHS),
    ]
    if spec.read_only:
        steps.append(RemountRootReadOnly())
    steps.append(SetHostname(name=spec.hostname))
    if backend.unshare_net:
        steps.append(LoopbackUp())
    return tuple(steps)
