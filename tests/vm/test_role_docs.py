"""Every role variable is documented where an operator looks for it: each default in `defaults/main.yml` is typed
in `meta/argument_specs.yml` (with the same default where the spec states one) and described in the role's
README; the spec declares nothing that has no default; OS-specific values come from `vars/<os>.yml` files that
all define the same names. No VM, no Ansible run: the files are read as YAML."""
import re
from pathlib import Path

import pytest

try:
    import yaml
except ImportError:                     # pragma: no cover
    yaml = None

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "defaults" / "main.yml").exists())


def load(path):
    if yaml is None:
        pytest.fail("prerequisite missing: PyYAML (comes with ansible-core); fix: run scripts/setup "
                    "(requirements-dev.txt into .venv)", pytrace=False)
    with open(path) as f:
        return yaml.safe_load(f) or {}


def readme_names(role):
    """Variable names the README mentions in backticks (a table row or the text)."""
    text = (role / "README.md").read_text()
    return set(re.findall(r"`(" + re.escape(role.name) + r"_[a-z0-9_]+)`", text))


def test_there_are_roles():
    assert {"pirun_cgroup", "pirun_prereqs", "pirun_runtime", "pirun_services", "pirun_registry"} <= {r.name for r in ROLES}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_default_is_typed_and_described(role):
    defaults = load(role / "defaults" / "main.yml")
    options = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    untyped = sorted(set(defaults) - set(options))
    assert not untyped, f"{role.name}: defaults not in meta/argument_specs.yml: {untyped}"
    no_default = sorted(set(options) - set(defaults) - {n for n, o in options.items() if o.get("required")})
    assert not no_default, f"{role.name}: argument_specs options without a default in defaults/main.yml: {no_default}"
    for name, spec in options.items():
        assert "type" in spec, f"{role.name}: {name} has no type in meta/argument_specs.yml"
        assert spec.get("description"), f"{role.name}: {name} has no description in meta/argument_specs.yml"
        if "default" in spec and name in defaults:
            assert spec["default"] == defaults[name], \
                f"{role.name}: {name}: argument_specs default {spec['default']!r} != defaults/main.yml {defaults[name]!r}"
    undocumented = sorted(set(defaults) - readme_names(role))
    assert not undocumented, f"{role.name}: defaults not described in README.md: {undocumented}"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_os_vars_files_define_the_same_names(role):
    files = sorted((role / "vars").glob("*.yml")) if (role / "vars").is_dir() else []
    names = {f.name: set(load(f)) for f in files}
    if not names:
        return
    assert "main.yml" in names, f"{role.name}: vars/ has OS files but no vars/main.yml fallback"
    for fname, keys in names.items():
        assert keys == names["main.yml"], f"{role.name}: vars/{fname} defines {sorted(keys)}, " \
                                          f"vars/main.yml {sorted(names['main.yml'])}"
        bad = sorted(k for k in keys if not k.startswith(f"__{role.name}_"))
        assert not bad, f"{role.name}: vars/{fname}: internal names must start with __{role.name}_: {bad}"
    users = "".join(p.read_text() for d in ("defaults", "tasks", "templates", "handlers")
                    for p in (role / d).glob("*") if p.is_file())
    unused = sorted(k for k in names["main.yml"] if k not in users)
    assert not unused, f"{role.name}: OS variables nothing refers to: {unused}"
