"""The demo organisation: an industrial park with apartments, shops, a dormitory and offices (210 rooms).

``seed(engine, now, channels)`` builds it through the same use cases the console calls (accounts, payments,
prepaid policies, users), so every step is validated and audited as in production:

- organisation ``DEMO`` (示范园区 PowerGate Demo Park), one site in Asia/Shanghai accepting the sandbox and the
  cashier (WeChat Pay and Alipay need a reachable provider; ``docs/demo.md`` says how to add them);
- tariffs: apartments on monthly tiers (1.00 yuan/kWh up to 100 kWh, 1.50 above), shops on four-band TOU,
  the dormitory with a free base allowance and standing charges, offices flat, water on monthly tiers;
- building A: 8 floors x 12 apartments (two with a water meter too), B: 2 x 20 shops, C: 5 x 10 dormitory
  rooms (small balances, the default friendly-credit window), D: 4 x 6 offices;
- one account per room, opened, its meter(s) attached, an opening balance sold at the cashier;
- staff users admin / operator / finance / viewer and tenant logins for the rooms worth watching.

The rooms worth watching (``WATCH``) are seeded to show the whole loop in the first minutes: A-0101 runs its
balance down, warns and trips; its tenant recharges in the portal and supply comes back. Everything is drawn
from a fixed seed: two demos are the same demo.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from powergate.domain.money import MICROS_PER_UNIT
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.headend.commands import Problem
from powergate.payments.base import PaymentChannel as PaymentAdapter
from powergate.services import accounts, notify, payments, prepaid
from powergate.store import metering

ORGANISATION = "DEMO"
ORGANISATION_NAME = "示范园区 PowerGate Demo Park"
SITE_NAME = "滨江产业园 Riverside Park"
TIMEZONE = "Asia/Shanghai"
SEED = 20_261_205
ACTOR = "system:demo-seed"
STAFF_PASSWORD = "powergate-demo"
TENANT_PASSWORD = "tenant-demo"
YUAN = MICROS_PER_UNIT

APARTMENT_TIERS = """
id = "apartment-tiered"
name = "公寓阶梯电价 Apartments, monthly tiers"
commodity = "electricity"
currency = "CNY"
[cycle]
period = "monthly"
start_day = 1
[[versions]]
effective_from = "2025-01-01"
[versions.tiers]
mode = "price"
blocks = [{ up_to = "100", price = "1.0000" }, { price = "1.5000" }]
"""

SHOP_TOU = """
id = "shop-tou"
name = "商铺分时电价 Shops, time of use"
commodity = "electricity"
currency = "CNY"
[[versions]]
effective_from = "2025-01-01"
[versions.tou.prices]
sharp = "1.3500"
peak = "1.0500"
flat = "0.6500"
valley = "0.3100"
[[versions.tou.seasons]]
name = "all year"
months = "1-12"
schedule = [
  { start = "00:00", band = "valley" },
  { start = "08:00", band = "flat" },
  { start = "10:00", band = "peak" },
  { start = "12:00", band = "flat" },
  { start = "18:00", band = "peak" },
  { start = "19:00", band = "sharp" },
  { start = "21:00", band = "peak" },
  { start = "22:00", band = "valley" },
]
"""

DORMITORY = """
id = "dormitory"
name = "宿舍(含基础电量) Dormitory with free base allowance"
commodity = "electricity"
currency = "CNY"
[cycle]
period = "monthly"
start_day = 1
[[versions]]
effective_from = "2025-01-01"
price = "0.5800"
base_allowance = "30"
standing_charges = [{ name = "room service", amount = "15.00", per = "month" }]
"""

OFFICE_FLAT = """
id = "office-flat"
name = "办公单一电价 Offices, flat"
commodity = "electricity"
currency = "CNY"
[[versions]]
effective_from = "2025-01-01"
price = "0.8500"
"""

WATER = """
id = "water-tiered"
name = "居民阶梯水价 Residential water, monthly tiers"
commodity = "water"
currency = "CNY"
[cycle]
period = "monthly"
start_day = 1
[[versions]]
effective_from = "2025-01-01"
[versions.tiers]
mode = "price"
blocks = [{ up_to = "10", price = "3.50" }, { up_to = "20", price = "4.55" }, { price = "6.80" }]
"""

TARIFFS = {
    "apartment-tiered": ("公寓阶梯电价 Apartments, monthly tiers", "electricity", APARTMENT_TIERS),
    "shop-tou": ("商铺分时电价 Shops, time of use", "electricity", SHOP_TOU),
    "dormitory": ("宿舍 Dormitory", "electricity", DORMITORY),
    "office-flat": ("办公单一电价 Offices, flat", "electricity", OFFICE_FLAT),
    "water-tiered": ("居民阶梯水价 Water, monthly tiers", "water", WATER),
}


@dataclass(frozen=True, slots=True)
class BuildingPlan:
    code: str
    name: str
    use: RoomUse
    floors: int
    rooms_per_floor: int
    tariff: str
    area_centi_m2: int
    balance_yuan: tuple[int, int]
    """Opening balances are drawn from this range (whole yuan)."""


BUILDINGS = (
    BuildingPlan("A", "A栋 公寓 Apartments", RoomUse.APARTMENT, 8, 12, "apartment-tiered", 6_550, (80, 400)),
    BuildingPlan("B", "B栋 商铺 Shops", RoomUse.SHOP, 2, 20, "shop-tou", 4_000, (300, 1_500)),
    BuildingPlan("C", "C栋 宿舍 Dormitory", RoomUse.DORMITORY, 5, 10, "dormitory", 2_400, (55, 150)),
    BuildingPlan("D", "D栋 办公 Offices", RoomUse.OFFICE, 4, 6, "office-flat", 12_000, (500, 3_000)),
)
WATER_ROOMS = ("A-0101", "A-0102")


@dataclass(frozen=True, slots=True)
class Watch:
    """A room seeded to show something in the first minutes, and the load its meter draws to show it."""

    room: str
    story: str
    balance_yuan: int
    constant_load_w: int | None = None
    """A steady load (W) so the story unfolds at the same pace at any hour; None: the room's usual profile."""
    policy: prepaid.WalletPolicy | None = None
    tenant_login: bool = True


WATCH = (
    Watch(
        "A-0101",
        "runs out first: warns at once (below 50 and 20 yuan), at 10 yuan, trips at zero; recharge it in the portal",
        balance_yuan=12,
        constant_load_w=6_000,
        policy=prepaid.WalletPolicy(friendly_window="off"),
    ),
    Watch(
        "A-0102",
        "power-protect (保电): its balance goes below zero but it is never cut off",
        balance_yuan=4,
        constant_load_w=3_000,
        policy=prepaid.WalletPolicy(power_protect=True, friendly_window="off"),
    ),
    Watch(
        "B-0101",
        "a shop close to its first warning level (50 yuan)",
        balance_yuan=56,
        constant_load_w=4_000,
        policy=prepaid.WalletPolicy(friendly_window="off"),
    ),
    Watch(
        "C-0101",
        "a dormitory room with the friendly-credit window: at night and on weekends its trip is deferred",
        balance_yuan=3,
        constant_load_w=1_500,
    ),
    Watch(
        "D-0101",
        "an office with a reconnect threshold of 100 yuan: after its trip a small recharge is not enough",
        balance_yuan=5,
        constant_load_w=8_000,
        policy=prepaid.WalletPolicy(reconnect_micros=100 * YUAN, friendly_window="off"),
        tenant_login=False,
    ),
)
WATCH_BY_ROOM = {w.room: w for w in WATCH}

STAFF = (
    ("admin", "admin", "管理员 administrator: everything, users included"),
    ("operator", "operator", "运维 operator: monitoring, remote trip / close, accounts"),
    ("finance", "finance", "财务 finance: orders, refunds, income, reports"),
    ("viewer", "viewer", "只读 viewer: sees everything, changes nothing"),
)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰飞鹏辉"
SHOP_NAMES = ("便利店", "咖啡馆", "面馆", "花店", "药店", "书店", "理发店", "水果店", "奶茶店", "五金店")
COMPANIES = ("科技", "设计", "咨询", "物流", "贸易", "传媒", "软件", "建筑")


@dataclass(frozen=True, slots=True)
class SeededMeter:
    meter_id: str
    room: str
    use: RoomUse
    commodity: str
    """``electricity`` or ``water``."""
    account_no: str
    wallet: str
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class Login:
    who: str
    organisation: str
    username: str
    password: str
    where: str
    """``console`` or ``portal``."""


@dataclass(slots=True)
class DemoSeed:
    organisation_id: int
    site_id: int
    rooms: int = 0
    accounts: int = 0
    meters: list[SeededMeter] = field(default_factory=list)
    logins: list[Login] = field(default_factory=list)
    account_ids: dict[str, int] = field(default_factory=dict)
    """account number -> account id"""

    def meter(self, room: str, commodity: str = "electricity") -> SeededMeter:
        return next(m for m in self.meters if m.room == room and m.commodity == commodity)


class SeedError(RuntimeError):
    """A use case refused part of the demo seed: a bug in the seed, named."""


def _ok(value: object, what: str) -> int:
    if isinstance(value, accounts.Rejected | Problem | notify.Rejected) or value is None:
        raise SeedError(f"{what}: {value}")
    assert isinstance(value, int), (what, value)
    return value


def _person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")


def _tenant_name(plan: BuildingPlan, rng: random.Random, index: int) -> str:
    if plan.use is RoomUse.SHOP:
        return f"{_person(rng)}{SHOP_NAMES[index % len(SHOP_NAMES)]}"
    if plan.use is RoomUse.OFFICE:
        return f"滨江{COMPANIES[index % len(COMPANIES)]}有限公司"
    return _person(rng)


def seed(engine: Engine, now: dt.datetime, channels: payments.Channels, *, inbox_webhook: str | None) -> DemoSeed:
    """Create the demo organisation in an empty, migrated database; returns what was made."""
    rng = random.Random(SEED)
    with engine.begin() as conn:
        org_id = _ok(accounts.create_organisation(conn, ORGANISATION, ORGANISATION_NAME, actor=ACTOR, now=now), "org")
        site_id = _ok(
            accounts.create_site(
                conn,
                org_id,
                SITE_NAME,
                timezone=TIMEZONE,
                currency="CNY",
                channels=(PaymentChannel.SANDBOX, PaymentChannel.CASHIER),
                min_purchase_micros=10 * YUAN,
                hoarding_limit_micros=20_000 * YUAN,
                actor=ACTOR,
                now=now,
            ),
            "site",
        )
        for tariff_id, (name, commodity, document) in TARIFFS.items():
            metering.add_tariff(conn, tariff_id, name, commodity, document, now)
        if inbox_webhook is not None:
            admin = notify.add_recipient(
                conn,
                site_id,
                "运维值班 Operations desk",
                admin_login="admin",
                addresses=notify.Addresses(webhook_url=inbox_webhook),
            )
            _ok(admin, "operations desk recipient")
    made = DemoSeed(org_id, site_id)
    with engine.begin() as conn:
        for plan in BUILDINGS:
            _building(conn, made, plan, rng, now)
    _opening_balances(engine, made, channels, rng, now)
    _users(engine, made, now)
    return made


def _building(conn: Connection, made: DemoSeed, plan: BuildingPlan, rng: random.Random, now: dt.datetime) -> None:
    building_id = _ok(accounts.create_building(conn, made.site_id, plan.name), plan.name)
    for floor in range(1, plan.floors + 1):
        floor_id = _ok(accounts.create_floor(conn, building_id, f"{floor}F"), f"{plan.code} floor {floor}")
        for number in range(1, plan.rooms_per_floor + 1):
            room_no = f"{plan.code}-{floor:02d}{number:02d}"
            room_id = _ok(accounts.create_room(conn, floor_id, room_no, plan.area_centi_m2, plan.use), room_no)
            made.rooms += 1
            account_no = room_no
            phone = f"138{rng.randrange(10**8):08d}"
            name = _tenant_name(plan, rng, made.rooms)
            account_id = _ok(
                accounts.stage_account(conn, made.site_id, account_no, name, phone=phone, actor=ACTOR, now=now),
                account_no,
            )
            view = accounts.open_account(conn, account_id, actor=ACTOR, reason="demo: moved in", now=now)
            if isinstance(view, accounts.Rejected):
                raise SeedError(f"{account_no}: {view}")
            made.accounts += 1
            made.account_ids[account_no] = account_id
            watch = WATCH_BY_ROOM.get(room_no)
            meters = [("electricity", plan.tariff, f"{room_no}-E")]
            if room_no in WATER_ROOMS:
                meters.append(("water", "water-tiered", f"{room_no}-W"))
            for commodity, tariff, meter_id in meters:
                attached = accounts.attach_meter(
                    conn,
                    meter_id,
                    room_id,
                    account_id,
                    tariff_id=tariff,
                    actor=ACTOR,
                    reason="demo: installed",
                    now=now,
                )
                _ok(attached, meter_id)
                made.meters.append(SeededMeter(meter_id, room_no, plan.use, commodity, account_no, view.wallet, watch))
            if watch is not None and watch.policy is not None:
                problem = prepaid.set_policy(conn, view.wallet_account_id, watch.policy, now)
                if problem is not None:
                    raise SeedError(f"{room_no} policy: {problem}")


def _opening_balances(
    engine: Engine, made: DemoSeed, channels: payments.Channels, rng: random.Random, now: dt.datetime
) -> None:
    """Every account buys its opening credit at the cashier: the real payment path, audited."""
    policy = payments.PaymentPolicy(frozenset({"cashier"}))
    by_account = {m.account_no: m for m in made.meters}
    plans = {plan.code: plan for plan in BUILDINGS}
    for account_no, meter in sorted(by_account.items()):
        watch = WATCH_BY_ROOM.get(account_no)
        low, high = plans[account_no[0]].balance_yuan
        yuan = watch.balance_yuan if watch is not None else rng.randint(low, high)
        order = payments.NewOrder(
            meter.wallet,
            yuan * 100,
            "cashier",
            "cash",
            description="demo: opening credit",
            operator="user:finance@DEMO",
        )
        sold = payments.pay_at_cashier(engine, channels, order, f"DEMO-OPEN-{account_no}", policy, now)
        if isinstance(sold, payments.Refused) or sold.verdict is not payments.Verdict.ACCEPTED:
            raise SeedError(f"{account_no}: opening credit: {sold}")


def _users(engine: Engine, made: DemoSeed, now: dt.datetime) -> None:
    from powergate.services import users

    with engine.begin() as conn:
        for username, role, what in STAFF:
            created = users.create_user(
                conn, made.organisation_id, username, STAFF_PASSWORD, role, actor=ACTOR, now=now, reason="demo"
            )
            _ok(created, f"user {username}")
            made.logins.append(Login(what, ORGANISATION, username, STAFF_PASSWORD, "console"))
        for watch in WATCH:
            if not watch.tenant_login:
                continue
            account_id = made.account_ids[watch.room]
            created = users.create_user(
                conn,
                made.organisation_id,
                watch.room,
                TENANT_PASSWORD,
                "tenant",
                account_id=account_id,
                actor=ACTOR,
                now=now,
                reason="demo tenant login",
            )
            _ok(created, f"tenant {watch.room}")
            made.logins.append(
                Login(f"租户 tenant of {watch.room}", ORGANISATION, watch.room, TENANT_PASSWORD, "portal")
            )


def payment_channels(sandbox_secret: bytes) -> dict[str, PaymentAdapter]:
    """The demo's channels: the sandbox (pays at once, signed notifications) and the cashier."""
    from powergate.payments.cashier import Cashier
    from powergate.payments.sandbox import Sandbox

    return {"sandbox": Sandbox(sandbox_secret), "cashier": Cashier()}


def summary(made: DemoSeed) -> Mapping[str, int]:
    return {"rooms": made.rooms, "accounts": made.accounts, "meters": len(made.meters)}
