"""stop, kill, rm, wait, inspect: podman's options, output and exit codes."""
import os
import time

from conftest import alive
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)

TRAP = "trap 'echo got-{sig}; exit {code}' {sig}; echo ready; while :; do sleep 0.05; done"


def _ready(pirun, ref, text="ready"):
    deadline = time.monotonic() + 10
    while text not in pirun("logs", ref).stdout:
        assert time.monotonic() < deadline, pirun("logs", ref)
        time.sleep(0.05)


def test_stop_sends_sigterm_to_a_pid_1_without_handler(pirun):
    pirun.detach("sleep", "300", name="s")
    pid = pirun.inspect("s")["State"]["Pid"]
    t0 = time.monotonic()
    r = pirun("stop", "s")
    assert (r.returncode, r.stdout) == (0, "s\n"), r.stderr
    assert time.monotonic() - t0 < 5                      # no 10 s grace: the default action was carried out
    assert not alive(pid)
    state = pirun.inspect("s")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 143 and state["Running"] is False


def test_stop_lets_a_handler_run(pirun):
    pirun.detach("sh", "-c", TRAP.format(sig="TERM", code=7), name="h")
    _ready(pirun, "h")
    assert pirun("stop", "h").returncode == 0
    assert pirun.inspect("h")["State"]["ExitCode"] == 7
    assert "got-TERM" in pirun("logs", "h").stdout


def test_stop_kills_after_the_timeout(pirun):
    pirun.detach("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done", name="stubborn")
    _ready(pirun, "stubborn")
    t0 = time.monotonic()
    r = pirun("stop", "-t", "1", "stubborn")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert 0.9 < took < 8, took
    assert pirun.inspect("stubborn")["State"]["ExitCode"] == 137


def test_stop_of_an_exited_container_is_fine_and_of_a_missing_one_is_125(pirun):
    pirun.detach("true", name="done")
    pirun.wait_status("done", "exited")
    r = pirun("stop", "done")
    assert (r.returncode, r.stdout) == (0, "done\n")
    line = one_line_error(pirun("stop", "nosuch"))
    assert 'no container with name or ID "nosuch" found' in line


def test_kill_default_is_sigkill_and_s_chooses(pirun):
    pirun.detach("sh", "-c", TRAP.format(sig="USR1", code=9), name="k")
    _ready(pirun, "k")
    r = pirun("kill", "-s", "USR1", "k")
    assert (r.returncode, r.stdout) == (0, "k\n"), r.stderr
    assert pirun("wait", "k").stdout == "9\n"
    assert "got-USR1" in pirun("logs", "k").stdout
    pirun.detach("sleep", "300", name="k2")
    assert pirun("kill", "k2").returncode == 0
    assert pirun("wait", "k2").stdout == "137\n"
    pirun.detach("sleep", "300", name="k3")
    assert pirun("kill", "--signal", "SIGTERM", "k3").returncode == 0
    assert pirun("wait", "k3").stdout == "143\n"


def test_kill_errors(pirun):
    pirun.detach("true", name="over")
    pirun.wait_status("over", "exited")
    assert "container state improper" in one_line_error(pirun("kill", "over"))
    one_line_error(pirun("kill", "nosuch"))
    pirun.detach("sleep", "300", name="alive")
    one_line_error(pirun("kill", "-s", "NOPE", "alive"))
    one_line_error(pirun("kill", "-s", "0x", "alive"))
    assert pirun.status("alive") == "running"


def test_rm(pirun):
    cid = pirun.detach("sleep", "300", name="r")
    pid = pirun.inspect("r")["State"]["Pid"]
    line = one_line_error(pirun("rm", "r"))
    assert "as it is running" in line and "pirun rm -f r" in line
    assert pirun.status("r") == "running"
    r = pirun("rm", "-f", "r")
    assert (r.returncode, r.stdout) == (0, "r\n"), r.stderr
    assert not alive(pid)
    assert pirun.ps() == [] and pirun.leftovers() == []
    one_line_error(pirun("rm", "r"))
    assert pirun("rm", "-i", "r").returncode == 0                    # --ignore: a missing one is fine
    assert not os.path.exists(pirun.runroot / "containers" / cid)


def test_wait_blocks_until_the_end_and_prints_the_code(pirun):
    pirun.detach("sh", "-c", "sleep 1; exit 42", name="w")
    t0 = time.monotonic()
    r = pirun("wait", "w")
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stderr
    assert time.monotonic() - t0 > 0.5
    assert pirun("wait", "w").stdout == "42\n"                          # an exited one: at once
    one_line_error(pirun("wait", "nosuch"))


def test_inspect(pirun, shared_tmp):
    (shared_tmp / "vol").mkdir()
    os.chown(shared_tmp / "vol", *_ids())
    cid = pirun.detach("sleep", "300", name="i", extra=["-v", f"{shared_tmp / 'vol'}:/mnt:ro", "--hostname", "box",
                                                         "-e", "FOO=bar"])
    data = pirun.inspect("i")
    assert data["Id"] == cid and data["Name"] == "i" and data["Path"] == "sleep" and data["Args"] == ["300"]
    st = data["State"]
    assert st["Status"] == "running" and st["Running"] and alive(st["Pid"]) and alive(st["ConmonPid"])
    assert st["StartedAt"].startswith("20") and st["FinishedAt"].startswith("0001")
    assert data["Mounts"] == [{"Type": "bind", "Source": str(shared_tmp / "vol"), "Destination": "/mnt",
                               "RW": False, "Options": ["rbind"], "Propagation": "rslave"}]
    assert data["NetworkSettings"]["Mode"] == "none" and data["HostConfig"]["NetworkMode"] == "none"
    assert "FOO=bar" in data["Config"]["Env"] and data["Config"]["Hostname"] == "box"
    assert data["HostConfig"]["Memory"] == 0 and data["HostConfig"]["PidsLimit"] == 0
    assert data["HostConfig"]["LogConfig"]["Type"] == "k8s-file"
    r = pirun("inspect", "--format", "{{.State.Status}}/{{.Config.Tty}}/{{.Name}}", "i")
    assert r.stdout == "running/false/i\n"
    one_line_error(pirun("inspect", "--format", "{{.Nope}}", "i"))
    one_line_error(pirun("inspect", "nosuch"))
    pirun("stop", "i")
    st = pirun.inspect("i")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 143 and st["FinishedAt"] > st["StartedAt"]
    assert st["Pid"] == 0 and st["ConmonPid"] == 0


def test_stop_and_rm_many_and_all(pirun):
    for n in ("a", "b", "c"):
        pirun.detach("sleep", "300", name=n)
    r = pirun("stop", "a", "b")
    assert r.stdout == "a\nb\n"
    assert [e["State"] for e in sorted(pirun.ps(), key=lambda e: e["Names"])] == ["exited", "exited", "running"]
    r = pirun("rm", "a", "nosuch", "b")
    assert r.returncode == 125 and r.stdout == "a\nb\n" and "nosuch" in r.stderr
    assert pirun("rm", "-f", "-a").returncode == 0
    assert pirun.ps() == []


def test_usage_errors(pirun):
    for args in (["stop"], ["rm"], ["wait"], ["inspect"], ["exec", "x"], ["logs"], ["ps", "extra"],
                 ["ps", "--format", "{{.ID}}"], ["stop", "-t", "x", "a"], ["rm", "--bogus", "a"]):
        one_line_error(pirun(*args))
    assert pirun("stop", "--help").returncode == 0


def _ids():
    from conftest import container_user
    _n, uid, gid, _h = container_user()
    return uid, gid


def test_exited_record_of_a_run_with_volume_and_ports_text(pirun):
    from net_helpers import free_port
    port = free_port()
    pirun.detach("sleep", "300", name="p", net="slirp4netns", extra=["-p", f"127.0.0.1:{port}:80"])
    row = pirun("ps").stdout.splitlines()[1]
    assert f"127.0.0.1:{port}->80/tcp" in row
    assert pirun.inspect("p")["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1",
                                                                         "HostPort": str(port)}]}
