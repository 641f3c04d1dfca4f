"""The roles, playbooks and molecule scenarios pass ansible-lint with the production profile (.ansible-lint),
and site.yml passes ansible-playbook's syntax check against inventory.example."""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def run(tool, *args):
    exe = VENV_BIN / tool
    if not exe.exists():
        pytest.fail(f"prerequisite missing: .venv/bin/{tool}; fix: run scripts/setup (requirements-dev.txt)",
                    pytrace=False)
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", NO_COLOR="1",
               ANSIBLE_NOCOLOR="1", PY_COLORS="0")
    return subprocess.run([str(exe), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)


def test_ansible_lint_production_profile():
    proc = run("ansible-lint", "--offline")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ansible-lint exited {proc.returncode}:\n{out[-6000:]}"
    assert "Profile 'production' was required, and it passed" in out, out[-3000:]


def test_site_yml_syntax_with_the_example_inventory():
    proc = run("ansible-playbook", "-i", "inventory.example", "--syntax-check", "site.yml")
    assert proc.returncode == 0, f"ansible-playbook --syntax-check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
