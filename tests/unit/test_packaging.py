"""environment.yml follows pyproject.toml: every dependency and test tool is in the conda file."""

import re
import tomllib

import yaml
from helpers.paths import REPO_ROOT

CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


def names(requirements) -> set[str]:
    out = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        extras = re.search(r"\[(.*?)\]", requirement)
        out.add(CONDA_NAMES.get(name, name))
        if extras:
            out |= {e.strip() for e in extras.group(1).split(",")}
    return out


def test_environment_yml_lists_every_declared_dependency():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = names(project["dependencies"]) | names(project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    listed = set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            listed |= names(p for p in entry.get("pip", []) if not p.startswith("-"))
        else:
            listed |= names([entry])
    assert wanted - listed == set()
