"""The pirun_registry role on the controller, without a VM and without systemd: its TLS, htpasswd and config
tasks run for real (connection local) into a temporary directory, Debian's own `/usr/bin/docker-registry serve`
runs that config.yml on a free 127.0.0.1 port (a subprocess the test owns and kills), and the role's wait task,
curl and skopeo talk to it over TLS verified against the role's CA only.

Checked: 401 without credentials, 200 with them; skopeo pushes an image with --dest-cert-dir (the client part's
certs.d directory) and --dest-creds; a second run changes nothing (certificate not remade, htpasswd not
rewritten); a new password changes exactly the htpasswd; a new subjectAltName list remakes the certificate and
keeps the CA; the client part writes ca.crt, the /etc/hosts line (into a temporary file) and an auth.json merged
with the entries of other registries; bad variables fail with one message naming the variable and the fix,
before the first task that changes anything.

Needs the Debian packages docker-registry, apache2-utils (htpasswd), openssl, skopeo and curl
(scripts/apt-packages.txt). The service itself is never touched: pirun_registry_service_enabled is false."""
import base64
import grp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from net_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TOOLS = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils", "openssl": "openssl",
         "skopeo": "skopeo", "curl": "curl"}


def require_tools():
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(f"prerequisite missing: {', '.join(missing)}; fix: apt-get install {' '.join(missing)} "
                    "(scripts/apt-packages.txt)", pytrace=False)
    try:
        grp.getgrnam("docker-registry")
    except KeyError:
        pytest.fail("prerequisite missing: group docker-registry; fix: apt-get install docker-registry", pytrace=False)


def ansible_playbook(tmp_path, playbook, *args, check=True, name="play.yml"):
    exe = VENV_BIN / "ansible-playbook"
    if not exe.exists():
        pytest.fail("prerequisite missing: .venv/bin/ansible-playbook; fix: run scripts/setup (requirements-dev.txt)",
                    pytrace=False)
    path = tmp_path / name
    path.write_text(json.dumps(playbook))
    inventory = tmp_path / "inventory"
    inventory.write_text("[registry]\nlocalhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", NO_PROXY="*",
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = subprocess.run([str(exe), "-i", str(inventory), *args, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    return proc


def recap(proc):
    m = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout)
    assert m, proc.stdout[-3000:]
    return {"ok": int(m[1]), "changed": int(m[2]), "failed": int(m[4])}


def changed_tasks(proc):
    """Names of the tasks that reported a change (the default callback prints `changed: [localhost]` under them)."""
    names, current = [], None
    for line in proc.stdout.splitlines():
        m = re.match(r"TASK \[(?:[^:\]]+ : )?(.*)\] \**$", line)
        if m:
            current = m[1]
        elif line.startswith("changed:") and current and (not names or names[-1] != current):
            names.append(current)
    return names


def role_tasks(tmp_path, variables, *files, extra_tasks=()):
    tasks = [{"name": f"pirun_registry {f}", "ansible.builtin.include_role": {"name": "pirun_registry", "tasks_from": f}}
             for f in files]
    return [{"hosts": "localhost", "gather_facts": False, "vars": variables, "tasks": tasks + list(extra_tasks)}]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def lab(tmp_path):
    require_tools()
    port = free_port()
    v = {
        "pirun_registry_name": "registry.lab",
        "pirun_registry_port": port,
        "pirun_registry_listen": "127.0.0.1",
        "pirun_registry_tls_san_extra": ["IP:127.0.0.1"],
        "pirun_registry_users": [{"name": "lab", "password": "lab-secret-1"}, {"name": "ci", "password": "ci-pass"}],
        "pirun_registry_config_dir": str(tmp_path / "etc"),
        "pirun_registry_storage_dir": str(tmp_path / "storage"),
        "pirun_registry_certs_dir": str(tmp_path / "certs.d"),
        "pirun_registry_hosts_file": str(tmp_path / "hosts"),
        "pirun_registry_service_enabled": False,
        # Never this machine's service, even if the guard above were lost.
        "pirun_registry_service": "pirun-test-no-such-service",
        "pirun_registry_wait_timeout": 20,
    }
    procs = []

    def serve():
        log = open(tmp_path / "registry.log", "ab")
        proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(tmp_path / "etc" / "config.yml")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def stop():
        while procs:
            proc = procs.pop()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    yield v, port, serve, stop
    stop()


def curl(port, ca, *args):
    proc = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*", "--cacert", str(ca),
                           *args, f"https://127.0.0.1:{port}/v2/"], capture_output=True, text=True, timeout=30)
    return proc.stdout


def make_archive(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "bin").mkdir()
    (rootfs / "bin" / "busybox").write_text("#!/bin/sh\n")       # what oci-archive.py checks for; never run
    (rootfs / "etc" / "greeting").write_text("hello from the lab registry\n")
    out = tmp_path / "web.tar"
    subprocess.run([sys.executable, str(REPO / "molecule" / "shared" / "oci-archive.py"), str(rootfs), str(out),
                    "--ref", "localhost/web:1", "--arch", "amd64"], check=True, capture_output=True, timeout=60)
    return out


def test_the_registry_serves_tls_and_htpasswd_and_takes_a_push(tmp_path, lab):
    v, port, serve, stop = lab
    etc = tmp_path / "etc"
    first = ansible_playbook(tmp_path, role_tasks(tmp_path, v, "tls", "users", "config"))
    assert recap(first)["changed"] > 0
    ca, crt, key = etc / "pirun-ca.crt", etc / "server.crt", etc / "server.key"
    text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout
    assert "DNS:registry.lab, IP Address:127.0.0.1" in text, text
    subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(crt)], check=True, capture_output=True)
    st = key.stat()
    assert (oct(st.st_mode & 0o777), grp.getgrgid(st.st_gid).gr_name) == ("0o640", "docker-registry")
    assert oct((etc / "pirun-ca.key").stat().st_mode & 0o777) == "0o600"
    config = (etc / "config.yml").read_text()
    assert f'addr: "127.0.0.1:{port}"' in config and "enabled: false" in config and "realm:" in config, config

    serve()
    # The role's own wait: 401 over TLS verified with the CA, by 127.0.0.1 (it is in the subjectAltName list).
    ansible_playbook(tmp_path, role_tasks(tmp_path, v, "wait"), name="wait.yml")
    assert curl(port, ca) == "401"
    assert curl(port, ca, "-u", "lab:lab-secret-1") == "200"
    assert curl(port, ca, "-u", "ci:ci-pass") == "200"
    assert curl(port, ca, "-u", "lab:wrong") == "401"

    # The client part: ca.crt in certs.d/NAME:PORT (read with slurp from the `registry` group's host), the hosts line.
    client_vars = dict(v, pirun_registry_address="127.0.0.1", pirun_registry_client_users=[])
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n10.0.0.9 registry.lab old\n")
    ansible_playbook(tmp_path, role_tasks(tmp_path, client_vars, "client"), name="client.yml")
    cert_dir = tmp_path / "certs.d" / f"registry.lab:{port}"
    assert (cert_dir / "ca.crt").read_bytes() == ca.read_bytes()
    assert oct((cert_dir / "ca.crt").stat().st_mode & 0o777) == "0o644"
    assert (tmp_path / "hosts").read_text() == "127.0.0.1 localhost\n127.0.0.1 registry.lab\n"

    archive = make_archive(tmp_path)
    dest = f"docker://127.0.0.1:{port}/web:1"
    push = ["skopeo", "copy", "--quiet", "--dest-cert-dir", str(cert_dir), f"oci-archive:{archive}", dest]
    denied = subprocess.run(push, capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0 and "unauthorized" in denied.stderr.lower(), denied.stderr
    pushed = subprocess.run(push[:2] + ["--dest-creds", "ci:ci-pass"] + push[2:], capture_output=True, text=True,
                            timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    inspect = subprocess.run(["skopeo", "inspect", "--cert-dir", str(cert_dir), "--creds", "lab:lab-secret-1", dest],
                             capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0 and json.loads(inspect.stdout)["Layers"], inspect.stderr

    # Idempotence: nothing is remade, nothing rewritten.
    files = {p.name: sha(p) for p in etc.iterdir()}
    second = ansible_playbook(tmp_path, role_tasks(tmp_path, v, "tls", "users", "config"), name="second.yml")
    assert recap(second)["changed"] == 0, changed_tasks(second)
    assert {p.name: sha(p) for p in etc.iterdir()} == files

    # A new password: exactly that user's htpasswd line changes, and the registry takes it after a restart.
    lines = dict(line.split(":", 1) for line in (etc / "htpasswd").read_text().split())
    v2 = dict(v, pirun_registry_users=[{"name": "lab", "password": "lab-secret-1"}, {"name": "ci", "password": "new-ci"}])
    third = ansible_playbook(tmp_path, role_tasks(tmp_path, v2, "tls", "users", "config"), name="third.yml")
    assert changed_tasks(third) == ["Write the users that are missing or whose password does not verify (bcrypt)"], changed_tasks(third)
    assert recap(third)["changed"] == 1
    after = {p.name: sha(p) for p in etc.iterdir()}
    assert {n for n in files if files[n] != after[n]} == {"htpasswd"}
    new_lines = dict(line.split(":", 1) for line in (etc / "htpasswd").read_text().split())
    assert new_lines["lab"] == lines["lab"] and new_lines["ci"] != lines["ci"] and new_lines["ci"].startswith("$2y$")
    stop()
    serve()
    ansible_playbook(tmp_path, role_tasks(tmp_path, v2, "wait"), name="wait.yml")
    assert curl(port, ca, "-u", "ci:new-ci") == "200" and curl(port, ca, "-u", "ci:ci-pass") == "401"

    # A user no longer listed is removed; the others stay as they are.
    v3 = dict(v2, pirun_registry_users=[{"name": "lab", "password": "lab-secret-1"}])
    ansible_playbook(tmp_path, role_tasks(tmp_path, v3, "users"), name="fourth.yml")
    assert (etc / "htpasswd").read_text().split() == [f"lab:{lines['lab']}"]

    # A new subjectAltName list remakes the server certificate with the same CA.
    v4 = dict(v3, pirun_registry_tls_san_extra=["IP:127.0.0.1", "DNS:registry.example"])
    fifth = ansible_playbook(tmp_path, role_tasks(tmp_path, v4, "tls"), name="fifth.yml")
    assert "Make the server certificate for the name and subjectAltName list, signed by the CA" in changed_tasks(fifth)
    assert sha(ca) == files["pirun-ca.crt"] and sha(crt) != files["server.crt"]
    text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout
    assert "DNS:registry.lab, IP Address:127.0.0.1, DNS:registry.example" in text, text
    subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(crt)], check=True, capture_output=True)


def test_auth_json_gets_the_pull_credentials_and_keeps_other_registries(tmp_path, lab):
    v, port, _serve, _stop = lab
    home = tmp_path / "home"
    (home / ".config" / "containers").mkdir(parents=True)
    other = {"auths": {"ghcr.io": {"auth": "b3RoZXI6c2VjcmV0"}, f"registry.lab:{port}": {"auth": "b2xkOm9sZA=="}},
             "credHelpers": {"x.io": "pass"}}
    authfile = home / ".config" / "containers" / "auth.json"
    authfile.write_text(json.dumps(other))
    uid, gid = os.getuid(), os.getgid()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    runs = {}
    for label in ("first", "second"):
        runs[label] = ansible_playbook(tmp_path, role_tasks(tmp_path, v, extra_tasks=[
            {"name": f"auth.json in {h.name}", "ansible.builtin.include_role": {"name": "pirun_registry",
                                                                                "tasks_from": "authfile"},
             "vars": {"pirun_registry_authfile_home": str(h), "pirun_registry_authfile_owner": str(uid),
                      "pirun_registry_authfile_group": str(gid)}} for h in (home, fresh)]), name=f"{label}.yml")
    assert recap(runs["second"])["changed"] == 0, changed_tasks(runs["second"])
    assert "lab-secret-1" not in runs["first"].stdout + runs["second"].stdout
    data = json.loads(authfile.read_text())
    assert data["auths"]["ghcr.io"] == other["auths"]["ghcr.io"] and data["credHelpers"] == other["credHelpers"]
    assert base64.b64decode(data["auths"][f"registry.lab:{port}"]["auth"]).decode() == "lab:lab-secret-1"
    assert oct(authfile.stat().st_mode & 0o777) == "0o600"
    made = fresh / ".config" / "containers" / "auth.json"
    assert json.loads(made.read_text()) == {"auths": {f"registry.lab:{port}": data["auths"][f"registry.lab:{port}"]}}
    assert [oct(p.stat().st_mode & 0o777) for p in (fresh / ".config", made.parent, made)] == ["0o700", "0o700", "0o600"]


# Each: variables over the lab's, the entry point's side, the message the one failure must contain.
BAD = {
    "port out of range": ({"pirun_registry_port": 70000}, "server",
                          "pirun_registry_port 70000 is not a port; set it to a number from 1 to 65535"),
    "port zero": ({"pirun_registry_port": 0}, "server", "pirun_registry_port 0 is not a port"),
    "port not a number": ({"pirun_registry_port": "http"}, "server", 'pirun_registry_port "http" is not a port'),
    "empty name": ({"pirun_registry_name": ""}, "server",
                   'pirun_registry_name "" is not a host name; set it to the name the Pis pull from'),
    "name with a space": ({"pirun_registry_name": "registry lab"}, "client", "pirun_registry_name \"registry lab\""),
    "user without password": ({"pirun_registry_users": [{"name": "lab"}]}, "server",
                              "pirun_registry_users: user lab has no password; give each user {name: NAME, password"),
    "user with an empty password": ({"pirun_registry_users": [{"name": "lab", "password": "x"},
                                                              {"name": "ci", "password": ""}]}, "server",
                                    "pirun_registry_users: user ci has no password"),
    "user without name": ({"pirun_registry_users": [{"password": "x"}]}, "server",
                          "pirun_registry_users has a user without a valid name"),
    "no users": ({"pirun_registry_users": []}, "server",
                 "pirun_registry_users is empty: the registry would be open to everyone; list its users"),
    "no pull credentials": ({"pirun_registry_users": []}, "client", "no pull credentials for the Pis"),
    "bad SAN entry": ({"pirun_registry_tls_san_extra": ["192.168.77.1"]}, "server",
                      'pirun_registry_tls_san_extra has "192.168.77.1"; write each entry as DNS:NAME or IP:ADDRESS'),
    "cert without key": ({"pirun_registry_tls_cert": "/x.crt"}, "server",
                         "only one of pirun_registry_tls_cert and pirun_registry_tls_key is set"),
    "bad address": ({"pirun_registry_address": "registry-host"}, "client",
                    'pirun_registry_address "registry-host" is not an IP address'),
}
GOOD = {
    "lab": ({}, "server"),
    "open registry": ({"pirun_registry_users": [], "pirun_registry_auth_enabled": False}, "server"),
    "pull user given": ({"pirun_registry_users": [], "pirun_registry_pull_user": "lab",
                         "pirun_registry_pull_password": "x", "pirun_registry_address": "192.168.77.1"}, "client"),
}


def test_bad_variables_fail_with_one_message_naming_the_variable(tmp_path, lab):
    v = lab[0]
    out = tmp_path / "results"
    out.mkdir()
    cases = [{"id": i, "vars": dict(v, **over, pirun_registry_validate_side=side)}
             for i, (over, side, *_rest) in enumerate(list(BAD.values()) + list(GOOD.values()))]
    # One block per case: its variables on the include (a loop cannot give include_role a dict of vars).
    blocks = [{
        "name": f"case {case['id']}",
        "block": [
            {"ansible.builtin.include_role": {"name": "pirun_registry", "tasks_from": "validate"}, "vars": case["vars"]},
            {"ansible.builtin.copy": {"content": "ok", "dest": f"{out}/{case['id']}", "mode": "0644"}},
        ],
        "rescue": [{"ansible.builtin.copy": {"content": "{{ [ansible_failed_result.msg] | to_json }}",
                                             "dest": f"{out}/{case['id']}", "mode": "0644"}}],
    } for case in cases]
    ansible_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": blocks}])
    for i, (label, (_over, _side, expected)) in enumerate(BAD.items()):
        text = (out / str(i)).read_text()
        assert text != "ok", f"{label}: accepted, expected a failure saying {expected!r}"
        msgs = json.loads(text)
        assert len(msgs) == 1 and expected in msgs[0] and "\n" not in msgs[0], f"{label}: {msgs}"
        assert msgs[0].startswith("pirun_registry: "), msgs
    for j, label in enumerate(GOOD, start=len(BAD)):
        assert (out / str(j)).read_text() == "ok", f"{label} was refused: {(out / str(j)).read_text()}"


def test_the_role_fails_on_a_bad_variable_before_its_first_change(tmp_path, lab):
    v = dict(lab[0], pirun_registry_users=[{"name": "lab"}], pirun_registry_packages=[])
    play = [{"hosts": "registry", "gather_facts": False, "vars": v, "roles": ["pirun_registry"]}]
    proc = ansible_playbook(tmp_path, play, "--check", check=False)
    assert proc.returncode != 0
    assert "pirun_registry_users: user lab has no password" in proc.stdout, proc.stdout[-3000:]
    tasks = [t for t in re.findall(r"^TASK \[pirun_registry : (.*)\]", proc.stdout, re.M)
             if not t.startswith("Validating arguments against arg spec")]
    assert tasks == ["Check the registry's name, port, addresses, TLS files and users"], tasks
    assert not (tmp_path / "etc").exists()
