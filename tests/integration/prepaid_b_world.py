"""A small world for the prepaid-b tests: one organisation, one site, accounts with a wallet and a meter each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, select

from powergate.domain.ledger import charge_entry, recharge_entry
from powergate.domain.structure import PaymentChannel
from powergate.services import accounts, prepaid
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import ledger_accounts, tariffs
from powergate.store.tables_structure import organisations

YUAN = 1_000_000
ACTOR = "admin:ops1"
FLAT = '[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n'


@dataclass(frozen=True)
class Tenant:
    account_id: int
    wallet: str
    wallet_id: int
    meter_id: str


def make_site(
    engine: Engine,
    now: dt.datetime,
    *,
    name: str = "Tower A",
    hoarding_limit_micros: int | None = None,
    min_purchase_micros: int = 0,
    calendar_overrides: Mapping[str, str] | None = None,
    org: str = "ORG1",
) -> int:
    with engine.begin() as conn:
        org_id = conn.execute(select(organisations.c.id).where(organisations.c.code == org)).scalar()
        if org_id is None:
            created = accounts.create_organisation(conn, org, "Org", actor=ACTOR, now=now)
            assert isinstance(created, int), created
            org_id = created
        site = accounts.create_site(
            conn,
            int(org_id),
            name,
            timezone="Asia/Shanghai",
            currency="CNY",
            channels=[PaymentChannel.SANDBOX, PaymentChannel.CASHIER],
            min_purchase_micros=min_purchase_micros,
            hoarding_limit_micros=hoarding_limit_micros,
            calendar_overrides=calendar_overrides,
            actor=ACTOR,
            now=now,
        )
        assert isinstance(site, int), site
        return site


def add_tenant(
    engine: Engine, site_id: int, account_no: str, now: dt.datetime, *, tariff: str = "flat", document: str = FLAT
) -> Tenant:
    with engine.begin() as conn:
        if conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff)).scalar() is None:
            metering.add_tariff(conn, tariff, tariff, "electricity", document, now)
        account_id = accounts.stage_account(conn, site_id, account_no, f"Tenant {account_no}", actor=ACTOR, now=now)
        assert isinstance(account_id, int), account_id
        opened = accounts.open_account(conn, account_id, actor=ACTOR, reason="moved in", now=now)
        assert not isinstance(opened, accounts.Rejected), opened
        meter_id = f"M-{account_no}"
        metering.add_meter(conn, meter_id, opened.wallet_account_id, tariff, now)
        assert (
            prepaid.set_policy(conn, opened.wallet_account_id, prepaid.WalletPolicy(friendly_window="off"), now) is None
        )
        return Tenant(account_id, opened.wallet, opened.wallet_account_id, meter_id)


def top_up(engine: Engine, tenant: Tenant, key: str, amount_micros: int, now: dt.datetime) -> None:
    with engine.begin() as conn:
        ledger_store.post(conn, recharge_entry(key, tenant.wallet, "cashier", amount_micros, now), now)
        prepaid.after_recharge(conn, tenant.wallet, now)


def spend(engine: Engine, tenant: Tenant, key: str, amount_micros: int, now: dt.datetime) -> None:
    with engine.begin() as conn:
        entry = charge_entry(key, tenant.wallet, {"energy": amount_micros}, now)
        assert entry is not None
        ledger_store.post(conn, entry, now)
        prepaid.after_ingest(conn, {tenant.wallet_id}, now)


def balance(engine: Engine, tenant: Tenant) -> int:
    with engine.connect() as conn:
        found = conn.execute(
            select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == tenant.wallet_id)
        ).scalar_one()
        return int(found)
