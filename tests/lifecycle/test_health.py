"""Health checks: podman's --health-* options, run by the container's monitor inside the container as `pirun
exec` runs a command; the status in ps and inspect; the on-failure action; `pirun healthcheck run`; an image's
Healthcheck. Intervals are sub-second so that each test takes a few seconds."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOTFS, container_user
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "image"))
from image_helpers import add_image, chown_tree, tree_layer, write_index  # noqa: E402

FAST = ["--health-interval", "0.2s"]


def health(pirun, ref):
    return pirun.inspect(ref)["State"].get("Health")


def wait_for(what, fn, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_health(pirun, ref, status, timeout=15):
    return wait_for(f"{ref} to be {status}", lambda: (h := health(pirun, ref)) and h["Status"] == status and h,
                    timeout)


def test_a_passing_check_turns_healthy_and_runs_inside_the_container(pirun):
    pirun.detach("sleep", "300", name="later", extra=["--health-cmd", "true"])      # first check in 30 s
    [entry] = pirun.ps()
    assert entry["Health"] == "starting" and entry["Status"].endswith(" (starting)"), entry
    pirun.detach("sleep", "300", name="ok", extra=["--hostname", "hc-box", "--health-cmd",
                                                   "hostname; cat /proc/1/comm", *FAST])
    h = wait_health(pirun, "ok", "healthy")
    assert h["FailingStreak"] == 0
    last = h["Log"][-1]
    assert last["ExitCode"] == 0 and last["Output"] == "hc-box\nsleep\n", last    # its UTS and PID namespaces
    assert last["Start"] <= last["End"]
    entry = next(e for e in pirun.ps() if e["Names"] == ["ok"])
    assert entry["Health"] == "healthy" and entry["Status"].startswith("Up ") and entry["Status"].endswith(
        " (healthy)"), entry
    row = next(r for r in pirun("ps").stdout.splitlines() if r.endswith(" ok"))
    assert "(healthy)" in row, row
    # it keeps running on its interval, and the log keeps the last 5
    wait_for("more checks", lambda: len(health(pirun, "ok")["Log"]) == 5 and
             health(pirun, "ok")["Log"][0]["Start"] > last["Start"])
    cfg = pirun.inspect("ok")["Config"]
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "hostname; cat /proc/1/comm"], "Interval": 200000000,
                                  "Timeout": 30000000000, "Retries": 3, "StartPeriod": 0}
    assert cfg["HealthcheckOnFailureAction"] == "none"


def test_the_json_array_form_runs_without_a_shell(pirun):
    pirun.detach("sleep", "300", name="arr", extra=["--health-cmd", '["CMD", "echo", "$HOME", "a  b"]', *FAST])
    h = wait_health(pirun, "arr", "healthy")
    assert h["Log"][-1]["Output"] == "$HOME a  b\n"


def test_a_shell_command_starting_with_a_bracket_is_a_shell_string(pirun):
    """podman: text that is not a JSON array goes to /bin/sh -c, the shell's `[` included."""
    pirun.detach("sleep", "300", name="br", extra=["--health-cmd", "[ -e /etc/passwd ] && echo yes", *FAST])
    h = wait_health(pirun, "br", "healthy")
    assert h["Log"][-1]["Output"] == "yes\n"
    assert pirun.inspect("br")["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "[ -e /etc/passwd ] && echo yes"]


def test_a_failing_check_is_unhealthy_after_exactly_retries_failures(pirun):
    pirun.detach("sleep", "300", name="steps", extra=["--health-cmd", "exit 2", "--health-retries", "3",
                                                      "--health-interval", "disable"])
    for n, status in ((1, "starting"), (2, "starting"), (3, "unhealthy"), (4, "unhealthy")):
        assert pirun("healthcheck", "run", "steps").returncode == 1
        h = health(pirun, "steps")
        assert (h["FailingStreak"], h["Status"], len(h["Log"])) == (n, status, n), h


def test_the_monitor_counts_failures_the_same_way(pirun):
    pirun.detach("sleep", "300", name="sick", extra=["--health-cmd", "echo no; exit 3", "--health-retries", "3",
                                                     *FAST])
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        h = health(pirun, "sick")
        seen.append((h["FailingStreak"], h["Status"], len(h["Log"])))
        if h["FailingStreak"] >= 4:
            break
        time.sleep(0.02)
    assert seen[-1][0] >= 4, seen
    for streak, status, entries in seen:
        assert status == ("unhealthy" if streak >= 3 else "starting"), seen
        assert entries == min(streak, 5), seen
    h = health(pirun, "sick")
    assert all(e["ExitCode"] == 3 and e["Output"] == "no\n" for e in h["Log"])
    assert pirun.status("sick") == "running"                          # on-failure none: it keeps running
    assert pirun.ps()[0]["Status"].endswith(" (unhealthy)")


def test_on_failure_kill_ends_the_detached_container_with_137(pirun):
    pirun.detach("sleep", "300", name="k", extra=["--health-cmd", "false", "--health-retries", "2",
                                                  "--health-on-failure", "kill", *FAST])
    pirun.wait_status("k", "exited", timeout=15)
    [entry] = pirun.ps()
    assert entry["ExitCode"] == 137, entry
    h = health(pirun, "k")
    assert h["Status"] == "unhealthy" and h["FailingStreak"] == 2 and len(h["Log"]) == 2, h


def test_on_failure_kill_ends_the_foreground_named_run_with_137(pirun):
    """What a systemd service runs: `pirun run --name NAME ...` in the foreground, restarted on 137."""
    proc = pirun.popen("run", "--name", "svc", "--net", "none", "--rootfs", ROOTFS, "--health-cmd", "exit 1",
                       "--health-retries", "2", "--health-on-failure", "kill", *FAST, "sleep", "300")
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 137, (proc.returncode, err)
    assert "Traceback" not in err
    h = health(pirun, "svc")
    assert h["Status"] == "unhealthy" and len(h["Log"]) == 2 and h["Log"][-1]["ExitCode"] == 1, h
    assert pirun.ps()[0]["ExitCode"] == 137


def test_on_failure_stop_sends_the_stop_signal(pirun):
    pirun.detach("sleep", "300", name="st", extra=["--health-cmd", "false", "--health-retries", "1",
                                                   "--health-on-failure", "stop", *FAST])
    pirun.wait_status("st", "exited", timeout=15)
    assert pirun.ps()[0]["ExitCode"] == 143                           # SIGTERM, not SIGKILL


def test_failures_in_the_start_period_do_not_count(pirun):
    t0 = time.time()
    pirun.detach("sleep", "300", name="slow", extra=["--health-cmd", "exit 1", "--health-retries", "1",
                                                     "--health-start-period", "2s", *FAST])
    h = wait_for("checks in the start period", lambda: (h := health(pirun, "slow")) and len(h["Log"]) >= 3 and h)
    assert h["Status"] == "starting" and h["FailingStreak"] == 0, h
    h = wait_health(pirun, "slow", "unhealthy")
    started = pirun.inspect("slow")["State"]["StartedAt"]
    assert h["FailingStreak"] >= 1
    assert time.time() - t0 >= 2.0, "unhealthy before the start period was over"
    assert started


def test_a_check_that_overruns_its_timeout_fails_and_is_killed(pirun):
    t0 = time.monotonic()
    pirun.detach("sleep", "300", name="hang", extra=["--health-cmd", "sleep 30", "--health-timeout", "0.3s",
                                                     "--health-retries", "1", *FAST])
    h = wait_health(pirun, "hang", "unhealthy", timeout=25)
    assert time.monotonic() - t0 < 15, "the check was not cut off at its timeout"
    entry = h["Log"][0]
    assert entry["ExitCode"] == -1 and "exceeded timeout of 300ms" in entry["Output"], entry
    pid1 = pirun.inspect("hang")["State"]["Pid"]
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    left = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.readlink(f"/proc/{p}/ns/pid") == ns and \
                    open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\x0030\x00":
                left.append(p)
        except OSError:
            pass
    assert left == [], "the timed-out check is still running in the container"


def test_healthcheck_run_exit_codes(pirun):
    _n, uid, gid, _h = container_user()
    flag = pirun.base / "flag"
    flag.mkdir()
    os.chown(flag, uid, gid)
    pirun.detach("sleep", "300", name="m", extra=["-v", f"{flag}:/mnt", "--health-cmd", "test -e /mnt/ok",
                                                  "--health-interval", "disable", "--health-retries", "1"])
    time.sleep(0.5)
    assert health(pirun, "m") == {"Status": "starting", "FailingStreak": 0, "Log": []}   # no schedule
    r = pirun("healthcheck", "run", "m")
    assert (r.returncode, r.stdout) == (1, "unhealthy\n"), (r.returncode, r.stdout, r.stderr)
    assert health(pirun, "m")["Status"] == "unhealthy"
    (flag / "ok").touch()
    r = pirun("healthcheck", "run", "m")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    h = health(pirun, "m")
    assert h["Status"] == "healthy" and [e["ExitCode"] for e in h["Log"]] == [1, 0], h

    pirun.detach("sleep", "300", name="plain")
    assert "has no defined healthcheck" in one_line_error(pirun("healthcheck", "run", "plain"))
    pirun("stop", "-t", "0", "m", check=True)
    assert "is not running" in one_line_error(pirun("healthcheck", "run", "m"))
    assert "no such container" in one_line_error(pirun("healthcheck", "run", "nothere"))


def test_a_command_that_is_not_found_is_a_failed_check(pirun):
    pirun.detach("sleep", "300", name="nf", extra=["--health-cmd", '["CMD", "/no/such"]', "--health-retries", "1",
                                                   *FAST])
    h = wait_health(pirun, "nf", "unhealthy")
    assert h["Log"][0]["ExitCode"] == 127 and "not found" in h["Log"][0]["Output"], h


@pytest.fixture
def hc_image(pirun):
    """A store with an image whose config has a Healthcheck (every 200 ms, `echo from-image`)."""
    layout = pirun.base / "layout"
    config = {"Cmd": ["sleep", "300"],
              "Healthcheck": {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 200_000_000,
                              "Timeout": 5_000_000_000, "Retries": 2}}
    desc, _ = add_image(layout, [tree_layer(ROOTFS)], config)
    write_index(layout, [desc], tag="hc:1")
    chown_tree(layout)
    pirun("load", "-i", layout, check=True)
    yield "localhost/hc:1"
    pirun("rm", "-f", "-a")
    pirun("image", "prune", "-a")


def test_an_images_healthcheck_applies(pirun, hc_image):
    r = pirun("run", "-d", "--name", "img", "--net", "none", hc_image)
    assert r.returncode == 0, r.stderr
    h = wait_health(pirun, "img", "healthy")
    assert h["Log"][-1]["Output"] == "from-image\n"
    assert pirun.inspect("img")["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "echo from-image"], "Interval": 200000000, "Timeout": 5000000000, "Retries": 2,
        "StartPeriod": 0}
    # the options override it, field by field
    r = pirun("run", "-d", "--name", "over", "--net", "none", "--health-cmd", "exit 4", "--health-retries", "1",
              hc_image)
    assert r.returncode == 0, r.stderr
    h = wait_health(pirun, "over", "unhealthy")
    assert h["Log"][0]["ExitCode"] == 4
    assert pirun.inspect("over")["Config"]["Healthcheck"]["Interval"] == 200000000   # still the image's


def test_no_healthcheck_disables_the_images(pirun, hc_image):
    r = pirun("run", "-d", "--name", "off", "--net", "none", "--no-healthcheck", hc_image)
    assert r.returncode == 0, r.stderr
    time.sleep(0.8)
    data = pirun.inspect("off")
    assert "Health" not in data["State"] and "Healthcheck" not in data["Config"], data["State"]
    [entry] = pirun.ps()
    assert entry["Health"] == "" and not entry["Status"].endswith(")"), entry
    assert "has no defined healthcheck" in one_line_error(pirun("healthcheck", "run", "off"))
    r = pirun("run", "-d", "--name", "none", "--net", "none", "--health-cmd", "none", hc_image)
    assert r.returncode == 0, r.stderr
    assert "Health" not in pirun.inspect("none")["State"]


@pytest.mark.parametrize("args, says", [
    (["--health-cmd", "true", "--health-interval", "5x"], "--health-interval: invalid duration '5x'"),
    (["--health-cmd", "true", "--health-interval", "1ms"], "--health-interval 1ms: must be at least 10ms"),
    (["--health-cmd", "true", "--health-timeout", "-1s"], "--health-timeout: invalid duration '-1s'"),
    (["--health-cmd", "true", "--health-start-period", "soon"], "--health-start-period: invalid duration"),
    (["--health-cmd", "true", "--health-retries", "0"], "--health-retries '0': expected a whole number of 1"),
    (["--health-cmd", "true", "--health-retries", "x"], "--health-retries 'x': expected a whole number"),
    (["--health-cmd", "true", "--health-on-failure", "restart"], "use --health-on-failure kill and let systemd"),
    (["--health-cmd", "true", "--health-on-failure", "reboot"], "expected none, kill or stop"),
    (["--health-cmd", "[1, 2]"], "expected a command or a JSON array of strings"),
    (["--health-cmd", "  "], "--health-cmd: empty command"),
    (["--health-cmd", "true", "--no-healthcheck"], "--no-healthcheck and --health-cmd contradict"),
    (["--health-interval", "1s"], "--health-interval: the container has no health check; fix: give --health-cmd"),
])
def test_bad_values_are_one_line_errors(pirun, args, says):
    r = pirun("run", "-d", "--name", "bad", "--net", "none", "--rootfs", ROOTFS, *args, "sleep", "300")
    assert says in one_line_error(r)
    assert pirun.ps() == []


def test_a_check_needs_a_recorded_container(pirun):
    r = pirun("run", "--net", "none", "--rootfs", ROOTFS, "--health-cmd", "true", "true")
    assert "health checks are run by a recorded container's monitor; fix: add --name NAME" in one_line_error(r)
