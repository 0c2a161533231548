"""The deployment files (deploy/) name only real settings and roles, and their configuration file loads."""

from __future__ import annotations

import re
from pathlib import Path

from powergate.cli.serve import ROLES
from powergate.config import SETTINGS, load_config

DEPLOY = Path(__file__).parents[2] / "deploy"
KNOWN_ENV = {setting.env for setting in SETTINGS}


def deploy_texts() -> dict[str, str]:
    return {path.name: path.read_text() for path in DEPLOY.rglob("*") if path.is_file()}


def test_the_example_configuration_loads_without_a_problem() -> None:
    config = load_config(DEPLOY / "powergate.toml", environ={"POWERGATE_SECRET_KEY": "x" * 40})
    assert config.sources["web.port"] == "file"
    assert config.sources["secret_key"] == "env"


def test_every_powergate_variable_in_the_deployment_files_is_a_setting() -> None:
    for name, text in deploy_texts().items():
        for variable in re.findall(r"POWERGATE_[A-Z0-9_]+", text):
            assert variable in KNOWN_ENV, f"{name}: {variable} is not a setting (docs/configuration.md)"


def test_every_role_the_deployment_files_start_exists() -> None:
    found = set()
    for text in deploy_texts().values():
        found.update(re.findall(r'"--role", "([a-z]+)"', text))
        found.update(re.findall(r"powergate@([a-z]+)\.service", text))
    assert found and found <= {*ROLES, "all"}, found
