"""``powergate headend run`` takes every head-end setting by one precedence rule: defaults < ``--config FILE`` <
``POWERGATE_*`` variables < its own options (``powergate.config.load_config``), as ``serve --role headend`` does.

The settings are read through the real parser and the real loader; the last test runs the real command (on
SQLite) with the name and DTU port from the file, then with an option overriding the name.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from powergate.cli import build_parser
from powergate.cli.headend import RUN_OPTIONS, _config, headend_settings
from powergate.config import BY_KEY
from powergate.headend.model import ReadItem
from powergate.services.headend_runtime import HeadendSettings
from testkit import free_port

FILE = """
timezone = "Asia/Urumqi"

[headend]
name = "from-file"
dtu_listen = "127.0.0.1:7199"
mqtt_broker = "127.0.0.1:1883"
mqtt_group = "file-group"
read_interval_s = 60
read_items = "energy,prepaid"
modbus = false
ingest = "queue"
"""


@pytest.fixture(autouse=True)
def no_headend_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets itself are in the environment."""
    for key in [*RUN_OPTIONS.values(), "headend.modbus", "headend.ingest", "database_url"]:
        monkeypatch.delenv(BY_KEY[key].env, raising=False)


def settings_of(argv: list[str]) -> HeadendSettings:
    args = build_parser().parse_args(argv)
    config = _config(args, RUN_OPTIONS)
    assert config is not None
    return headend_settings(config, config.headend_ingest)


def test_without_a_file_or_variables_the_settings_defaults_are_the_options_defaults_of_before(
    tmp_path: Path,
) -> None:
    settings = settings_of(["headend", "--url", f"sqlite:///{tmp_path / 'pg.db'}", "run"])
    assert (settings.name, settings.dtu_listen, settings.mqtt_broker, settings.mqtt_group) == (
        "headend-1", ("0.0.0.0", 7100), None, "headend"
    )  # fmt: skip
    schedule = settings.schedule
    assert (schedule.interval_s, schedule.items, schedule.tz) == (
        900.0, frozenset({ReadItem.ENERGY, ReadItem.RELAY}), ZoneInfo("Asia/Shanghai")
    )  # fmt: skip
    assert settings.ingest == "direct" and settings.modbus is True


def test_the_file_sets_every_head_end_setting_a_variable_overrides_the_file_and_an_option_overrides_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "powergate.toml"
    config.write_text(FILE, encoding="utf-8")
    base = ["headend", "--url", f"sqlite:///{tmp_path / 'pg.db'}", "--config", str(config), "run"]

    from_file = settings_of(base)
    assert (from_file.name, from_file.dtu_listen, from_file.mqtt_broker, from_file.mqtt_group) == (
        "from-file", ("127.0.0.1", 7199), ("127.0.0.1", 1883), "file-group"
    )  # fmt: skip
    assert (from_file.schedule.interval_s, from_file.schedule.items, from_file.schedule.tz) == (
        60.0, frozenset({ReadItem.ENERGY, ReadItem.PREPAID}), ZoneInfo("Asia/Urumqi")
    )  # fmt: skip
    assert from_file.modbus is False and from_file.ingest == "queue"

    monkeypatch.setenv("POWERGATE_HEADEND_NAME", "from-env")
    monkeypatch.setenv("POWERGATE_HEADEND_READ_INTERVAL_S", "30")
    monkeypatch.setenv("POWERGATE_TIMEZONE", "Asia/Hong_Kong")
    from_env = settings_of(base)
    assert (from_env.name, from_env.schedule.interval_s, from_env.schedule.tz) == (
        "from-env", 30.0, ZoneInfo("Asia/Hong_Kong")
    )  # fmt: skip
    assert from_env.dtu_listen == ("127.0.0.1", 7199), "what the variables leave alone still comes from the file"

    options = ["--name", "from-option", "--listen", "off", "--broker", "10.0.0.5:1884", "--group", "option-group"]
    options += ["--interval", "5", "--read", "energy,clock", "--timezone", "UTC"]
    from_options = settings_of([*base, *options])
    assert (from_options.name, from_options.dtu_listen, from_options.mqtt_broker, from_options.mqtt_group) == (
        "from-option", None, ("10.0.0.5", 1884), "option-group"
    )  # fmt: skip
    assert (from_options.schedule.interval_s, from_options.schedule.items, from_options.schedule.tz) == (
        5.0, frozenset({ReadItem.ENERGY, ReadItem.CLOCK}), ZoneInfo("UTC")
    )  # fmt: skip
    assert from_options.modbus is False and from_options.ingest == "queue", "no option for these: the file's"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--listen", "nonsense", "--listen: 'nonsense' is not HOST:PORT"),
        ("--broker", "broker-without-port", "--broker: 'broker-without-port' is not HOST:PORT"),
        ("--interval", "0", "--interval: 0.0 must be a positive number"),
        ("--timezone", "Mars/Olympus", "--timezone: 'Mars/Olympus' is not a known time zone"),
        ("--read", "energy,kettle", "--read: 'energy,kettle': choose from energy, instant, relay, prepaid, clock"),
        ("--name", "two words", "--name: 'two words' must be 1..64 letters"),
    ],
)
def test_a_bad_option_is_named_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    from powergate.cli import main

    url = f"sqlite:///{tmp_path / 'unused.db'}"
    assert main(["headend", "--url", url, "run", option, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "unused.db").exists(), "nothing started"


def test_a_bad_value_in_the_file_names_the_setting_and_the_file_even_with_the_option_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    config = tmp_path / "powergate.toml"
    config.write_text("[headend]\nread_interval_s = -1\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    assert main(["headend", "--url", url, "--config", str(config), "run", "--interval", "5"]) == 2
    err = capsys.readouterr().err
    assert f"headend.read_interval_s: in {config}: -1.0 must be a positive number" in err


def test_the_command_runs_with_the_files_name_and_dtu_port_and_an_option_overrides_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main
    from powergate.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'pg.db'}"
    upgrade(url)
    port = free_port()
    config = tmp_path / "powergate.toml"
    config.write_text(f'[headend]\nname = "north-1"\ndtu_listen = "127.0.0.1:{port}"\n', encoding="utf-8")
    command = ["headend", "--url", url, "--config", str(config), "run", "--duration", "0.5"]

    assert main(command) == 0
    assert f"head-end north-1: 0 meters; DTU port {port}; ingest direct" in capsys.readouterr().out
    assert main([*command, "--name", "north-2"]) == 0
    assert f"head-end north-2: 0 meters; DTU port {port}; ingest direct" in capsys.readouterr().out
