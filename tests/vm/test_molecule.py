"""The Ansible roles on real (emulated) Debian 12 VMs: `molecule test -s SCENARIO` from the repository root.

default: create (image built by debootstrap and cached, qemu TCG boot), prepare (an OCI image archive of the busybox
rootfs, written on the controller), check (--check --diff on the fresh VM), converge (site.yml), idempotence
(second converge: changed=0), verify (as root: what the roles wrote, /dev/fuse, skopeo, fuse-overlayfs, the
/usr/local/bin/pirun link; as the container user: pirun --version, skopeo inspect of the archive, a fuse-overlayfs
mount in a user namespace, with verify_images_enabled `pirun load -i` and `pirun run` of the archive, run.py
--check, hostname/PID 1/uid 0, published port, OOM kill, pids limit, the cgroup acceptance of
molecule/shared/verify_cgroup.yml, no leftovers), destroy. PIRUN_MOLECULE_VERIFY_IMAGES=false skips the pirun
load/run tasks.
rpi: the same VM dressed up as a Raspberry Pi (fake device tree model and /boot/firmware/cmdline.txt): the
cmdline edit, its idempotence and exactly one reboot by the handler.
fleet: two VMs booted at once on a private LAN, the lab registry on one, two services declared on both (see
molecule/fleet/molecule.yml).
PIRUN_MOLECULE_SCENARIOS picks the scenarios (default: "fleet default rpi"; "arm64" runs the arm64 VM, ~2.5x
slower). PIRUN_MOLECULE_JOBS scenarios run at once (default 2: the longest, fleet, beside default then rpi); all
are started when the first of these tests runs, and each test waits for its own.
Each molecule log streams to .cache/molecule-SCENARIO.log (directory: PIRUN_MOLECULE_LOG_DIR); a failure shows
its tail. A missing prerequisite is a failure that names it, never a skip.
"""
import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
SCENARIOS = os.environ.get("PIRUN_MOLECULE_SCENARIOS", "fleet default rpi").split()
JOBS = max(1, int(os.environ.get("PIRUN_MOLECULE_JOBS", "2")))
LOG_DIR = Path(os.environ.get("PIRUN_MOLECULE_LOG_DIR", REPO / ".cache"))
# Cold image build (~2 min) + boot + converge + idempotence + verify + destroy is ~10 min on an idle machine
# (amd64 TCG) for default, ~30 min for fleet beside it; arm64 is ~2.5x slower.
TIMEOUT = int(os.environ.get("PIRUN_MOLECULE_TIMEOUT", "3600"))

# Host tools the scenario needs, and the Debian package that brings each (scripts/apt-packages.txt).
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "apt-ftparchive": "apt-utils",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "flock": "util-linux",
}
ARM64_TOOLS = {"qemu-system-aarch64": "qemu-system-arm", "qemu-aarch64-static": "qemu-user-static"}
VIRTIO_NET_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


def fail_missing(what, fix):
    pytest.fail(f"prerequisite missing: {what}; fix: {fix}", pytrace=False)


def check_prerequisites(scenario):
    if os.geteuid() != 0:
        fail_missing("root", "run the VM tests as root (debootstrap and chroot build the image)")
    for tool in ("molecule", "ansible-playbook", "ansible-lint"):
        if not (VENV_BIN / tool).exists():
            fail_missing(f".venv/bin/{tool}", "run scripts/setup (installs requirements-dev.txt into .venv)")
    path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    tools = dict(HOST_TOOLS)
    if scenario == "arm64":
        tools.update(ARM64_TOOLS)
    for tool, package in tools.items():
        if shutil.which(tool, path=path) is None:
            fail_missing(f"{tool} (Debian package {package})", "run scripts/setup (scripts/apt-packages.txt)")
    if scenario != "arm64" and not VIRTIO_NET_ROM.exists():
        fail_missing(f"{VIRTIO_NET_ROM} (Debian package ipxe-qemu)", "run scripts/setup")
    return path


def tail(path, lines=80):
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text[-lines:])


def run_scenario(scenario, path):
    """molecule test -s SCENARIO, its output streamed to its log. Returns (rc, seconds, log path, message)."""
    log_path = LOG_DIR / f"molecule-{scenario}.log"
    env = dict(os.environ, PATH=path, ANSIBLE_NOCOLOR="1", PY_COLORS="0", NO_COLOR="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV_BIN / "molecule"), "test", "-s", scenario]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(f"$ cd {REPO} && {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # molecule was cut short before its own destroy: stop the VMs it may have left running.
            subprocess.run([str(VENV_BIN / "molecule"), "destroy", "-s", scenario], cwd=REPO, env=env,
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=300)
            return None, time.monotonic() - started, log_path, f"did not finish within {TIMEOUT} s"
    elapsed = time.monotonic() - started
    with open(log_path, "a") as log:
        log.write(f"\nmolecule test -s {scenario}: exit {rc} after {elapsed:.0f} s\n")
    return rc, elapsed, log_path, f"exited {rc} after {elapsed:.0f} s"


@pytest.fixture(scope="module")
def molecule_runs():
    """Every selected scenario, JOBS at a time, started at once; {scenario: future or prerequisite message}."""
    runs, pool = {}, concurrent.futures.ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="molecule")
    for scenario in SCENARIOS:
        if not (REPO / "molecule" / scenario / "molecule.yml").exists():
            runs[scenario] = f"no molecule scenario {scenario!r} (molecule/{scenario}/molecule.yml)"
            continue
        try:
            path = check_prerequisites(scenario)
        except pytest.fail.Exception as exc:
            runs[scenario] = str(exc)
            continue
        runs[scenario] = pool.submit(run_scenario, scenario, path)
    yield runs
    pool.shutdown(wait=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, molecule_runs):
    run = molecule_runs[scenario]
    if isinstance(run, str):
        pytest.fail(run, pytrace=False)
    rc, elapsed, log_path, what = run.result()
    assert rc == 0, f"molecule test -s {scenario} {what}; log {log_path}, its end:\n{tail(log_path)}"
    print(f"molecule test -s {scenario}: {elapsed:.0f} s (log {log_path})")
