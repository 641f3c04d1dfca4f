"""The pirun_services role on the controller, without a VM: what an operator sees for a bad service declaration
(one message naming the service and the fix, before anything changes), and the unit text a declaration becomes
(pirun run in the foreground, every argument quoted for systemd, a health check as pirun's --health-* options with
--health-on-failure kill). The rendered ExecStart is then run as systemd would split it, with --rootfs for the
image, as the unprivileged test user: a failing check must end it with 137 by itself.

Runs ansible-playbook with a local connection: the role's validation tasks for each declaration, and its
template rendered into a temporary directory."""
import json
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOTFS, container_user, user_env, user_kwargs

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

BAD = {
    "bad name": ([{"name": "my web", "image": "x"}], "service my web: the name must match"),
    "name twice": ([{"name": "web", "image": "x"}, {"name": "web", "image": "y"}],
                   "service web: the name is used by more than one service"),
    "no image": ([{"name": "web", "image": ""}], "service web: no image"),
    "port out of range": ([{"name": "web", "image": "x", "publish": ["70000:80"]}],
                          "service web: invalid port in publish 70000:80; use [IP:]HOST_PORT:CONTAINER_PORT"),
    "port without host port": ([{"name": "web", "image": "x", "publish": ["127.0.0.1:8080"]}],
                               "service web: invalid port in publish 127.0.0.1:8080"),
    "memory": ([{"name": "web", "image": "x", "memory": "lots"}],
               "service web: memory lots; use a size such as 64M"),
    "unquoted no": ([{"name": "web", "image": "x", "restart": False}],
                    "service web: restart False; use always, on-failure or 'no' (quoted"),
    "health check without cmd": ([{"name": "web", "image": "x", "healthcheck": {"interval": "5s"}}],
                                 "service web: healthcheck {\"interval\": \"5s\"}; give cmd"),
    "health check cmd not strings": ([{"name": "web", "image": "x", "healthcheck": {"cmd": ["test", 1]}}],
                                     "service web: healthcheck {\"cmd\": [\"test\", 1]}; give cmd"),
    "health check not a mapping": ([{"name": "web", "image": "x", "healthcheck": "true"}],
                                   "service web: healthcheck true; give a mapping"),
    "health check interval": ([{"name": "web", "image": "x", "healthcheck": {"cmd": "true", "interval": "5 min"}}],
                              "service web: healthcheck {\"cmd\": \"true\", \"interval\": \"5 min\"}; its fields"),
    "health check zero interval": ([{"name": "web", "image": "x", "healthcheck": {"cmd": "true", "interval": "0s"}}],
                                   "interval, timeout (above 0)"),
    "health check timeout": ([{"name": "web", "image": "x", "healthcheck": {"cmd": "true", "timeout": "soon"}}],
                             "service web: healthcheck {\"cmd\": \"true\", \"timeout\": \"soon\"}; its fields"),
    "health check retries": ([{"name": "web", "image": "x", "healthcheck": {"cmd": "true", "retries": 0}}],
                             "retries a whole number of 1 or more"),
    "health check unknown field": ([{"name": "web", "image": "x", "healthcheck": {"cmd": "true", "on_failure": "stop"}}],
                                   "its fields are cmd, interval, timeout, retries and start_period"),
    "host port twice": ([{"name": "a", "image": "x", "publish": ["8080:80"]},
                         {"name": "b", "image": "x", "publish": ["127.0.0.1:8080:81"]}],
                        "host port 8080/tcp is published by more than one service of this host (a b )"),
}
GOOD = {
    "full": [{"name": "web", "image": "registry.lab:5000/web:1.4", "publish": ["8080:8080", "127.0.0.1:8443:443/tcp"],
              "memory": "64M", "cpus": "0.5", "pids": 64, "restart": "always",
              "healthcheck": {"cmd": "true", "interval": "1m", "retries": 2, "start_period": "10s"}}],
    "health check, Go durations and a list": [
        {"name": "web", "image": "x", "healthcheck": {"cmd": ["test", "-e", "/ready"], "interval": "1m30s",
                                                      "timeout": "500ms", "start_period": 0, "retries": "2"}}],
    "the molecule scenario's": [
        {"name": "web", "image": "registry.lab:5000/web:1", "publish": ["8080:8080"], "restart": "always",
         "healthcheck": {"cmd": "wget -q -O /dev/null http://127.0.0.1:8080/", "interval": "5s", "retries": 2,
                         "start_period": "5s"}}],
    "same port, tcp and udp": [{"name": "a", "image": "x", "publish": ["8080:80"]},
                               {"name": "b", "image": "x", "publish": ["8080:81/udp"]}],
}


def ansible_playbook(tmp_path, playbook):
    exe = VENV_BIN / "ansible-playbook"
    if not exe.exists():
        pytest.fail("prerequisite missing: .venv/bin/ansible-playbook; fix: run scripts/setup (requirements-dev.txt)",
                    pytrace=False)
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(playbook))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = subprocess.run([str(exe), "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3",
                           str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def test_bad_declarations_fail_with_one_message_naming_the_service(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    declarations = [services for services, _ in BAD.values()] + list(GOOD.values())
    cases = [{"id": i, "services": services} for i, services in enumerate(declarations)]
    case_tasks = tmp_path / "case.yml"
    case_tasks.write_text(json.dumps([{
        "block": [
            {"ansible.builtin.include_role": {"name": "pirun_services", "tasks_from": "validate"},
             "vars": {"pirun_services_list": "{{ case.services }}", "pirun_services_user": "pirun"}},
            {"ansible.builtin.copy": {"content": "ok", "dest": f"{out}/{{{{ case.id }}}}", "mode": "0644"}},
        ],
        "rescue": [
            {"ansible.builtin.copy": {
                "content": "{{ (ansible_failed_result.results | default([ansible_failed_result])"
                           " | selectattr('failed', 'defined') | selectattr('failed') | map(attribute='msg')"
                           " | list) | to_json }}",
                "dest": f"{out}/{{{{ case.id }}}}", "mode": "0644"}},
        ],
    }]))
    ansible_playbook(tmp_path, [{
        "hosts": "localhost", "gather_facts": False, "vars": {"cases": cases},
        "tasks": [{"ansible.builtin.include_tasks": str(case_tasks), "loop": "{{ cases }}",
                   "loop_control": {"loop_var": "case"}}],
    }])
    for i, (label, (_services, expected)) in enumerate(BAD.items()):
        text = (out / str(i)).read_text()
        assert text != "ok", f"{label}: accepted, expected a failure saying {expected!r}"
        msgs = json.loads(text)
        assert len(msgs) >= 1 and all(expected in m for m in msgs), f"{label}: {msgs}"
        assert all("\n" not in m for m in msgs), f"{label}: not one line: {msgs}"
    for j, label in enumerate(GOOD, start=len(BAD)):
        assert (out / str(j)).read_text() == "ok", f"{label} was refused: {(out / str(j)).read_text()}"


SERVICE = {"name": "web", "user": "pirun", "image": "registry.lab:5000/web:1.4", "archive": "", "command": [],
           "env": {}, "publish": [], "volumes": [], "memory": "", "cpus": "", "pids": 0, "restart": "on-failure",
           "log_driver": "", "state": "started", "healthcheck": {}}


def render(tmp_path, services):
    """{name: the unit text} of each service (fields over SERVICE), through the role's template."""
    defaults = {"pirun_services_pirun": "/usr/local/bin/pirun", "pirun_services_restart_sec": 5,
                "pirun_services_stop_timeout": 70}
    tasks = [{"ansible.builtin.template": {"src": f"{REPO}/roles/pirun_services/templates/pirun-service.service.j2",
                                           "dest": f"{tmp_path}/pirun-{s['name']}.service", "mode": "0644"},
              "vars": {"pirun_services_unit": dict(SERVICE, **s), "pirun_services_image_id": "sha256:1234"}}
             for s in services]
    ansible_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "vars": defaults, "tasks": tasks}])
    return {s["name"]: (tmp_path / f"pirun-{s['name']}.service").read_text() for s in services}


def settings(unit):
    return dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))


def exec_argv(line):
    """An Exec line split as systemd does for the quoting the template uses: "..." with \\ and \" escaped,
    then $$ and %% (specifiers) undone."""
    return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(line)]


def test_a_declaration_becomes_a_foreground_pirun_run_unit(tmp_path):
    service = {"name": "web", "image": "registry.lab:5000/web:1.4",
               "command": ["/bin/sh", "-c", 'echo "$HOME 100%" && exec httpd -f -p 8080'],
               "env": {"GREETING": 'say "hi" \\o/'}, "publish": ["127.0.0.1:8080:8080"], "volumes": ["/srv:/data:ro"],
               "memory": "64M", "cpus": "0.5", "pids": 64, "restart": "always",
               "healthcheck": {"cmd": ["wget", "-q", "http://127.0.0.1:8080/"], "interval": "1m", "retries": 2,
                               "start_period": 10}}
    plain = {"name": "plain", "image": "x", "restart": "always"}
    shell = {"name": "shell", "image": "x", "healthcheck": {"cmd": '[ -e /ready ] && test "$HOME" = / # 100%'}}
    units = render(tmp_path, [service, plain, shell])
    unit = units["web"]
    lines = settings(unit)
    assert lines["ExecStart"] == (
        '/usr/local/bin/pirun run --name web --replace --rm --env "GREETING=say \\"hi\\" \\\\o/"'
        ' --publish "127.0.0.1:8080:8080" --volume "/srv:/data:ro" --memory "64M" --cpus "0.5" --pids-limit 64'
        ' --health-cmd "[\\"wget\\", \\"-q\\", \\"http://127.0.0.1:8080/\\"]" --health-interval "1m"'
        ' --health-retries 2 --health-start-period "10s" --health-timeout "30s" --health-on-failure kill'
        ' "registry.lab:5000/web:1.4" "/bin/sh" "-c" "echo \\"$$HOME 100%%\\" && exec httpd -f -p 8080"')
    argv = exec_argv(lines["ExecStart"])
    assert json.loads(argv[argv.index("--health-cmd") + 1]) == service["healthcheck"]["cmd"]
    assert argv[-1] == 'echo "$HOME 100%" && exec httpd -f -p 8080'
    assert lines["ExecStop"] == "/usr/local/bin/pirun stop web"
    assert lines["Restart"] == "always" and lines["Type"] == "exec" and lines["Delegate"] == "yes"
    assert lines["WantedBy"] == "default.target"
    assert "ID sha256:1234" in unit
    assert "Wants" not in lines and "ExecStartPre" not in lines and "timer" not in unit and ".health" not in unit
    assert "--health" not in units["plain"]
    argv = exec_argv(settings(units["shell"])["ExecStart"])
    assert argv[argv.index("--health-cmd"):argv.index("--health-on-failure") + 2] == [
        "--health-cmd", shell["healthcheck"]["cmd"], "--health-interval", "30s", "--health-retries", "3",
        "--health-start-period", "0s", "--health-timeout", "30s", "--health-on-failure", "kill"]
    assert sorted(p.name for p in tmp_path.glob("pirun-*")) == ["pirun-plain.service", "pirun-shell.service",
                                                                "pirun-web.service"]


def test_the_units_exec_start_runs_and_a_failing_check_ends_it_with_137(tmp_path):
    """The rendered ExecStart, split as systemd splits it, run as the container user with --rootfs in the
    image's place: pirun accepts every option, and the check failing `retries` times kills it (137), which is
    what lets Restart= start the service again."""
    service = {"name": "hc", "image": "IMAGE", "command": ["sleep", "60"], "restart": "always",
               "healthcheck": {"cmd": '[ -e /no/such/file ] || { echo "not $HOME" 100%; exit 1; }',
                               "interval": "0.2s", "retries": 2, "timeout": "5s"}}
    argv = exec_argv(settings(render(tmp_path, [service])["hc"])["ExecStart"])
    assert argv[:2] == ["/usr/local/bin/pirun", "run"]
    at = argv.index("IMAGE")
    base = Path(tempfile.mkdtemp(prefix="pirun-test-svc-", dir="/tmp"))
    _n, uid, gid, _h = container_user()
    os.chown(base, uid, gid)
    pirun = [str(REPO / "runtime" / "pirun"), "--root", str(base / "root"), "--runroot", str(base / "run")]
    try:
        start = time.monotonic()
        proc = subprocess.run(pirun + argv[1:at] + ["--net", "none", "--rootfs", str(ROOTFS)] + argv[at + 1:],
                              capture_output=True, text=True, timeout=20, env=user_env(), cwd="/", **user_kwargs())
        took = time.monotonic() - start
        assert proc.returncode == 137, (proc.returncode, proc.stderr)
        assert took < 15, took
        left = subprocess.run(pirun + ["ps", "-a", "--format", "json"], capture_output=True, text=True, timeout=30,
                              env=user_env(), cwd="/", **user_kwargs())
        assert json.loads(left.stdout) == [], left.stdout         # --rm: nothing left for --replace
    finally:
        subprocess.run(pirun + ["rm", "-f", "-a"], capture_output=True, timeout=60, env=user_env(), cwd="/",
                       **user_kwargs())
        subprocess.run(["rm", "-rf", str(base)], check=False)
