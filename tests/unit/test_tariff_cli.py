"""``powergate tariff check`` and ``quote``: exit codes, problems printed, charges as JSON or a table.

The quote of every example tariff in docs/examples/tariffs against the example readings runs here, so the
documentation never rots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from powergate.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tariffs"
TARIFF_FILES = sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.json"))


def test_check_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tariff", "check", *map(str, TARIFF_FILES)]) == 0
    assert capsys.readouterr().out.count(": ok: ") == len(TARIFF_FILES)


def test_check_prints_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'id = "bad"\n[[versions]]\neffective_from = "2025-01-01"\nprice = "-1"\nbase_allowance = "-5"\n',
        encoding="utf-8",
    )
    assert main(["tariff", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: versions[0].price: negative price -1000000 micros" in err
    assert f"{bad}: versions[0].base_allowance: must not be negative" in err


@pytest.mark.parametrize("tariff", TARIFF_FILES, ids=lambda p: p.name)
def test_every_example_tariff_quotes_the_example_readings(tariff: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readings = EXAMPLES / ("water-readings.csv" if tariff.stem == "water" else "readings.csv")
    assert main(["tariff", "quote", "--tariff", str(tariff), "--readings", str(readings)]) == 0
    quote = json.loads(capsys.readouterr().out)
    assert quote["total_amount_micros"] > 0
    for meter in quote["meters"]:
        assert meter["quarantined"] == []
        assert meter["total_amount_micros"] == meter["energy_amount_micros"] + meter["standing_amount_micros"]
        for charge in meter["charges"]:
            assert sum(line["amount_micros"] for line in charge["lines"]) == charge["amount_micros"]


def test_the_monthly_blocks_example_quotes_130_kwh_at_145_yuan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings = tmp_path / "r.csv"
    readings.write_text(
        "reading_id,meter_id,timestamp,total_kwh\n"
        "1,M,2025-03-01T00:00:00+08:00,100.00\n"
        "2,M,2025-03-10T00:00:00+08:00,160.00\n"
        "3,M,2025-03-31T00:00:00+08:00,230.00\n",
        encoding="utf-8",
    )
    assert main(["tariff", "quote", "--tariff", str(EXAMPLES / "tiered-price.json"), "--readings", str(readings)]) == 0
    quote = json.loads(capsys.readouterr().out)
    assert quote["total_amount"] == "145.00"
    assert quote["meters"][0]["quantity"] == "130.000"


def test_the_table_shows_estimates_replacements_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tariff", "quote", "--tariff", str(EXAMPLES / "commercial-tou.toml")]
    assert main([*args, "--readings", str(EXAMPLES / "readings.csv"), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "estimated" in out
    assert "skipped B-4: baseline: initial reading of a replacement meter" in out
    assert out.strip().splitlines()[-1].startswith("Total ")


def test_a_low_power_limit_quarantines_and_the_quote_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tariff", "quote", "--tariff", str(EXAMPLES / "flat.toml"), "--readings", str(EXAMPLES / "readings.csv")]
    assert main([*args, "--max-power-kw", "1"]) == 0
    quote = json.loads(capsys.readouterr().out)
    reasons = [q["reason"] for meter in quote["meters"] for q in meter["quarantined"]]
    assert reasons and all("above the limit of 1000 W" in reason for reason in reasons)


def test_bad_inputs_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readings = tmp_path / "r.csv"
    readings.write_text("reading_id,meter_id,timestamp,total_kwh\n1,M,yesterday,1\n", encoding="utf-8")
    args = ["tariff", "quote", "--tariff", str(EXAMPLES / "flat.toml"), "--readings", str(readings)]
    assert main(args) == 1
    assert "line 2.timestamp" in capsys.readouterr().err
    assert main([*args[:-1], str(EXAMPLES / "readings.csv"), "--timezone", "Mars/Olympus"]) == 1
