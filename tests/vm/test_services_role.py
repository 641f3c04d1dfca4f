"""The pirun_services role on the controller, without a VM: what an operator sees for a bad service declaration
(one message naming the service and the fix, before anything changes), and the unit text a declaration becomes
(pirun run in the foreground, every argument quoted for systemd, the health-check timer's interval in seconds).

Runs ansible-playbook with a local connection: the role's validation tasks for each declaration, and its
templates rendered into a temporary directory."""
import json
import os
import subprocess
from pathlib import Path

import pytest

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
                                 "service web: healthcheck"),
    "host port twice": ([{"name": "a", "image": "x", "publish": ["8080:80"]},
                         {"name": "b", "image": "x", "publish": ["127.0.0.1:8080:81"]}],
                        "host port 8080/tcp is published by more than one service of this host (a b )"),
}
GOOD = {
    "full": [{"name": "web", "image": "registry.lab:5000/web:1.4", "publish": ["8080:8080", "127.0.0.1:8443:443/tcp"],
              "memory": "64M", "cpus": "0.5", "pids": 64, "restart": "always",
              "healthcheck": {"cmd": "true", "interval": "1m", "retries": 2, "start_period": "10s"}}],
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


def test_a_declaration_becomes_a_foreground_pirun_run_unit(tmp_path):
    service = {"name": "web", "user": "pirun", "image": "registry.lab:5000/web:1.4", "archive": "",
               "command": ["/bin/sh", "-c", 'echo "$HOME 100%" && exec httpd -f -p 8080'],
               "env": {"GREETING": 'say "hi" \\o/'}, "publish": ["127.0.0.1:8080:8080"], "volumes": ["/srv:/data:ro"],
               "memory": "64M", "cpus": "0.5", "pids": 64, "restart": "always", "log_driver": "", "state": "started",
               "healthcheck": {"cmd": ["wget", "-q", "http://127.0.0.1:8080/"], "interval": "1m", "retries": 2,
                               "start_period": "10s"}}
    defaults = {"pirun_services_pirun": "/usr/local/bin/pirun", "pirun_services_restart_sec": 5,
                "pirun_services_stop_timeout": 70,
                "pirun_services_healthcheck_script": "/usr/local/lib/pirun/pirun-healthcheck"}
    tasks = [{"ansible.builtin.template": {"src": f"{REPO}/roles/pirun_services/templates/{src}",
                                           "dest": f"{tmp_path}/{dest}", "mode": "0644"},
              "vars": {"pirun_services_unit": service, "pirun_services_image_id": "sha256:1234",
                       "pirun_services_interval": 60, "pirun_services_start_period": 10}}
             for src, dest in (("pirun-service.service.j2", "pirun-web.service"),
                               ("pirun-health.service.j2", "pirun-web-health.service"),
                               ("pirun-health.timer.j2", "pirun-web-health.timer"))]
    ansible_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "vars": defaults, "tasks": tasks}])
    unit = (tmp_path / "pirun-web.service").read_text()
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["ExecStart"] == (
        '/usr/local/bin/pirun run --name web --replace --rm --env "GREETING=say \\"hi\\" \\\\o/"'
        ' --publish "127.0.0.1:8080:8080" --volume "/srv:/data:ro" --memory "64M" --cpus "0.5" --pids-limit 64'
        ' "registry.lab:5000/web:1.4" "/bin/sh" "-c" "echo \\"$$HOME 100%%\\" && exec httpd -f -p 8080"')
    assert lines["ExecStop"] == "/usr/local/bin/pirun stop web"
    assert lines["Restart"] == "always" and lines["Type"] == "exec" and lines["Delegate"] == "yes"
    assert lines["WantedBy"] == "default.target" and lines["Wants"] == "pirun-web-health.timer"
    assert "ID sha256:1234" in unit
    health = (tmp_path / "pirun-web-health.service").read_text()
    assert ('ExecStart=/usr/local/lib/pirun/pirun-healthcheck web 2 10 -- "wget" "-q" "http://127.0.0.1:8080/"'
            in health.splitlines())
    timer = (tmp_path / "pirun-web-health.timer").read_text().splitlines()
    assert "OnUnitActiveSec=60" in timer and "OnActiveSec=60" in timer
