"""The prepaid simulation's world, its driver and its auditor (used by ``test_prepaid_simulation.py``).

The world is the real engine on one database: ``Ingestor`` (rating, ledger, balance policy in one transaction),
``services.payments`` with the sandbox channel (signed notifications), ``services.prepaid`` (outbox relay,
deferred trips), the persisted command queue and its ``Dispatcher`` delivering through the in-memory head-end
link (``headend.memory``) to virtual meters (``sim.meter``), whose relay is the meter's own. Time is a fake
clock that every part reads.

The driver plays the outside world and the head-end's loops, one operation at a time: it reads meters (the
snapshots travel through a "network" that may duplicate, reorder and delay them), delivers them to ingest,
pays (the provider's notification is delivered now, later, twice, stale or never: reconciliation finds it),
refunds, advances the clock through friendly windows, unplugs meters, relays the outbox, runs the dispatcher,
injects a crash at the N-th SQL statement of whatever runs next (the transaction in flight rolls back; the
process is then "restarted": engine disposed, a new one opened on the same database, a new dispatcher that
recovers its claims) and restarts cleanly.

The auditor keeps its own books, never reading them from the database: for each wallet, credits = payments the
provider confirmed (each exactly once), refunds, and deductions recomputed from the readings ingest accepted by
replaying ``domain.rating.rate`` over the same batches, and checked again by a closed form (the sum of
deductions of a meter equals the cost of its whole consumption, floored once). Then it checks the database
against them: balances, one ledger entry per billed reading, ``store.ledger.audit`` and ``services.reconcile``
exact for every day, and at the end (commands delivered, the clock outside every friendly window) each meter's
own relay against the wallet's balance and the platform's intent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, event, func, select

from powergate.domain.calendar import DayType, SiteCalendar
from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.domain.rating import Rated, RatingContext, RatingState, Reading, rate
from powergate.domain.tariff_files import load_tariff
from powergate.headend import commands as queue
from powergate.headend.commands import Dispatcher, DispatchOptions, RetryPolicy
from powergate.headend.memory import LinkFaults, MemoryLink
from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
from powergate.headend.scheduler import snapshot_readings
from powergate.payments.sandbox import Sandbox
from powergate.services import payments, prepaid, reconcile
from powergate.services.ingest import Ingestor
from powergate.sim.fleet import build_meters
from powergate.sim.meter import VirtualMeter
from powergate.sim.profiles import ProfileKind
from powergate.store import ledger as ledger_store
from powergate.store import metering, schema
from powergate.store.db import make_engine
from powergate.store.tables import ledger_entries, readings
from powergate.store.tables_prepaid import outbox

YUAN = 1_000_000
FEN = 10_000
ZONE = "Asia/Shanghai"
TZ = ZoneInfo(ZONE)
START = dt.datetime(2026, 11, 25, 9, 0, tzinfo=TZ).astimezone(dt.UTC)
"""A Wednesday morning, site-local, outside every friendly window the simulation uses."""
WINDOWS = ("off", "default", "22:00-06:00", "12:00-14:00+nonworkdays")
TOU_PRICES = {"sharp": 1_350_000, "peak": 1_050_000, "flat": 650_000, "valley": 310_000}
FLAT_PRICE = 1_000_000
TARIFFS = {
    "tou": """
id = "tou"
[[versions]]
effective_from = "2020-01-01"
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
  { start = "18:00", band = "sharp" },
  { start = "21:00", band = "peak" },
  { start = "22:00", band = "valley" },
]
""",
    "flat": 'id = "flat"\n[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n',
}
SANDBOX_SECRET = b"sandbox-secret-of-the-simulation"
CHANNELS: dict[str, payments.PaymentChannel] = {}
PAYMENT_POLICY = payments.PaymentPolicy(frozenset({"sandbox"}))
OPERATOR = "operator:sim"
DISPATCHER = "sim-headend"
MAX_DISPATCH_ROUNDS = 200
"""Bound on dispatcher rounds (one command each) in one operation."""
FINAL_SETTLE_STEPS = 40
"""Bound on the clock steps (of ``FINAL_STEP``) the final phase takes to deliver every command."""
FINAL_STEP = dt.timedelta(minutes=2)


class InjectedCrash(RuntimeError):
    """Raised in place of the N-th SQL statement: the transaction in flight rolls back, as in a crash."""


# -- the operations (Hypothesis draws lists of them; the repr is the sequence a failure prints) --------------


@dataclass(frozen=True)
class WalletSetup:
    window: str
    reconnect_yuan: int
    overdraft_yuan: int
    protect: bool
    credit_yuan: int
    tariff: str


@dataclass(frozen=True)
class Advance:
    minutes: int


@dataclass(frozen=True)
class Tick:
    """The head-end's routine: the clock moves on, every online meter is read and its reading delivered."""

    minutes: int


@dataclass(frozen=True)
class Read:
    meters: tuple[int, ...]


@dataclass(frozen=True)
class Deliver:
    count: int
    shuffle: int
    """Seed of the order the network delivers in (0: oldest first)."""
    duplicate: bool
    """Also deliver again a snapshot that was delivered before."""


@dataclass(frozen=True)
class Pay:
    wallet: int
    amount_fen: int
    notify: bool
    """The provider's notification arrives now (else later, or never: reconciliation must find the payment)."""


@dataclass(frozen=True)
class Notify:
    pick: int
    fresh: bool
    """Re-signed now (a provider retry) or the original bytes (stale once the clock moved 5 minutes)."""


@dataclass(frozen=True)
class Refund:
    wallet: int
    amount_fen: int
    original: bool
    """To the channel of the wallet's latest order (else in cash)."""


@dataclass(frozen=True)
class Relay:
    pass


@dataclass(frozen=True)
class Dispatch:
    rounds: int


@dataclass(frozen=True)
class Offline:
    meter: int
    offline: bool


@dataclass(frozen=True)
class Crash:
    after_statements: int
    """The N-th SQL statement from now (of whatever runs next) raises ``InjectedCrash``."""


@dataclass(frozen=True)
class Restart:
    pass


@dataclass(frozen=True)
class Reconcile:
    pass


Op = Advance | Tick | Read | Deliver | Pay | Notify | Refund | Relay | Dispatch | Offline | Crash | Restart | Reconcile


@dataclass(frozen=True)
class Scenario:
    seed: int
    wallets: tuple[WalletSetup, ...]
    ops: tuple[Op, ...]
    drop_reply: float = 0.0
    garble: float = 0.0


# -- the crash injector -------------------------------------------------------------------------------------


class Crasher:
    """Counts SQL statements on an engine and raises ``InjectedCrash`` in place of the armed one."""

    def __init__(self) -> None:
        self.left: int | None = None
        self.fired = 0

    def arm(self, statements: int) -> None:
        assert statements >= 1
        self.left = statements

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.left is None or statement.startswith("BEGIN"):
            return
        self.left -= 1
        if self.left <= 0:
            self.left = None
            self.fired += 1
            raise InjectedCrash(f"injected crash #{self.fired} before: {statement[:80]}")


# -- the auditor's own books --------------------------------------------------------------------------------


@dataclass
class MeterBook:
    meter_id: str
    wallet: int
    tariff: str
    context: RatingContext
    state: RatingState
    baseline: Reading | None = None
    charged: dict[str, int] = field(default_factory=dict)
    """reading id -> micros, for every reading the model rated with a charge."""


@dataclass
class WalletBook:
    code: str
    account_id: int
    setup: WalletSetup
    meters: list[str]
    paid_micros: int = 0
    refunded_micros: int = 0


@dataclass
class Order:
    order_no: str
    wallet: int
    amount_fen: int
    notification: tuple[dict[str, str], bytes]
    credited: bool = False
    refunded_fen: int = 0


@dataclass
class PendingRefund:
    refund_no: str
    op: Refund
    order: Order | None
    """The order refunded to (its latest when the refund was asked for), or None: in cash."""


class Books:
    """Expected balances from the auditor's own replay of rating and the payments it saw confirmed."""

    def __init__(self, wallets: list[WalletBook], meters: dict[str, MeterBook]) -> None:
        self.wallets = wallets
        self.meters = meters
        self.seen: set[str] = set()

    def deducted(self, wallet: int) -> int:
        return sum(sum(m.charged.values()) for m in self.meters.values() if m.wallet == wallet)

    def balance(self, wallet: int) -> int:
        book = self.wallets[wallet]
        return book.paid_micros - book.refunded_micros - self.deducted(wallet)

    def ingested(self, batch: Sequence[Reading]) -> None:
        """What ingest must have done with a batch it committed: the same rating, replayed independently."""
        fresh: dict[str, Reading] = {}
        for reading in batch:
            if reading.reading_id not in self.seen:
                fresh.setdefault(reading.reading_id, reading)
        self.seen.update(fresh)
        for reading in sorted(fresh.values(), key=lambda r: (r.meter_id, r.at, r.reading_id)):
            book = self.meters[reading.meter_id]
            outcome = rate(book.state, reading, book.context)
            if book.baseline is None and outcome.state.last_reading_id == reading.reading_id:
                book.baseline = reading
            book.state = outcome.state
            if isinstance(outcome, Rated) and outcome.charge.amount_micros:
                assert reading.reading_id not in book.charged, f"{reading.reading_id} rated twice by the model"
                book.charged[reading.reading_id] = outcome.charge.amount_micros


@functools.lru_cache(maxsize=1)
def rating_contexts() -> dict[str, RatingContext]:
    """The auditor's rating contexts, built from the tariff texts (immutable; shared by every scenario)."""
    return {name: RatingContext(load_tariff(text), SiteCalendar.china(), TZ) for name, text in TARIFFS.items()}


# -- the world ------------------------------------------------------------------------------------------------


class World:
    """One simulated site on one database; ``run(scenario)`` plays it and returns the findings."""

    def __init__(self, engine: Engine, crasher: Crasher, scenario: Scenario, log: list[str]) -> None:
        self.scenario = scenario
        self.log = log
        self.now = START
        self.crasher = crasher
        self.crasher.left = None
        self.crashes_before = crasher.fired
        self.engine = engine
        self.restarts = 0
        self.sandbox = Sandbox(SANDBOX_SECRET)
        self.channels: dict[str, payments.PaymentChannel] = {"sandbox": self.sandbox}
        self.network: list[MeterSnapshot] = []
        self.delivered: list[MeterSnapshot] = []
        self.orders: list[Order] = []
        self.refunds: list[PendingRefund] = []
        self.uncertain: set[str] = set()
        self.counter = 0
        rng = random.Random(scenario.seed)
        virtual = build_meters(
            len(scenario.wallets) + 1,
            seed=scenario.seed,
            now_s=int(START.timestamp()),
            load_scale_permille=3000,
            profile=ProfileKind.SHOP,
        )
        self.meters: dict[str, VirtualMeter] = {}
        for index, meter in enumerate(virtual):
            meter.balance_micros = 10**12  # the meter's own purse never trips it: the platform bills here
            self.meters[f"M-{index}"] = meter
        faults = LinkFaults(drop_reply=scenario.drop_reply, garble=scenario.garble, seed=rng.randrange(2**32))
        self.link = MemoryLink(self.meters, self.clock, faults=faults, timeout_s=0.001)
        self.endpoints = {
            meter_id: MeterEndpoint(meter_id, Transport.DLT645, meter.address, "dtu-sim")
            for meter_id, meter in self.meters.items()
        }
        self.books = self._setup()
        self.ingestor = self._ingestor()
        self.dispatcher = self._dispatcher()

    # -- wiring -----------------------------------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        return self.now

    def _ingestor(self) -> Ingestor:
        return Ingestor(self.engine, clock=self.clock, after_post=prepaid.after_ingest)

    def _dispatcher(self) -> Dispatcher:
        retry = RetryPolicy(base_delay_s=5, max_delay_s=60, offline_recheck_s=5, lease_s=60)
        return Dispatcher(
            self.engine,
            self.link,
            self.endpoints.get,
            name=DISPATCHER,
            clock=self.clock,
            options=DispatchOptions(batch=1, retry=retry),
            rng=random.Random(self.scenario.seed * 1000 + self.restarts),
        )

    def restart(self, why: str) -> None:
        """The process dies and comes back: every database connection closed, the services built anew.

        The engine object is kept, with its pool emptied (``dispose``): what it keeps besides connections is
        the cache of compiled statements, which a new process would rebuild to the same effect and which,
        rebuilt at every restart, would triple the run time of the simulation.
        """
        self.log.append(f"restart ({why})")
        self.engine.dispose()
        self.restarts += 1
        self.ingestor = self._ingestor()
        self.dispatcher = self._dispatcher()

    def _setup(self) -> Books:
        """Wallets 0..n-1 with one meter each; wallet 0 has a second meter (a relay decision goes to both)."""
        wallets: list[WalletBook] = []
        meters: dict[str, MeterBook] = {}
        contexts = rating_contexts()
        with self.engine.begin() as conn:
            for name, text in TARIFFS.items():
                metering.add_tariff(conn, name, name, "electricity", text, self.now)
            for index, setup in enumerate(self.scenario.wallets):
                code = wallet_code(f"A-SIM-{index}")
                account_id = ledger_store.ensure_account(
                    conn, code, self.now, overdraft_limit_micros=setup.overdraft_yuan * YUAN
                )
                meter_ids = [f"M-{index}"] + (["M-" + str(len(self.scenario.wallets))] if index == 0 else [])
                for meter_id in meter_ids:
                    metering.add_meter(conn, meter_id, account_id, setup.tariff, self.now)
                    meters[meter_id] = MeterBook(
                        meter_id, index, setup.tariff, contexts[setup.tariff], RatingState(meter_id)
                    )
                policy = prepaid.WalletPolicy(
                    reconnect_micros=setup.reconnect_yuan * YUAN,
                    power_protect=setup.protect,
                    friendly_window=setup.window,
                )
                assert prepaid.set_policy(conn, account_id, policy, self.now) is None
                book = WalletBook(code, account_id, setup, meter_ids)
                if setup.credit_yuan:
                    entry = recharge_entry(f"cash:open:{index}", code, "cash", setup.credit_yuan * YUAN, self.now)
                    ledger_store.post(conn, entry, self.now)
                    book.paid_micros += setup.credit_yuan * YUAN
                prepaid.evaluate(conn, [account_id], self.now)  # as an account opening does
                wallets.append(book)
        return Books(wallets, meters)

    # -- running ----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        for number, op in enumerate(self.scenario.ops):
            self.log.append(f"{number}: {op}")
            await self._guarded(op)
        self.log.append("final phase")
        await self.final()

    async def _guarded(self, op: Op) -> None:
        try:
            await self.apply(op)
        except InjectedCrash as crash:
            await self._quiesce()
            self.restart(str(crash))
            if self.uncertain:
                self._settle_uncertain()

    async def _quiesce(self) -> None:
        """Let work already started by the dead process end (its threads cannot be called back)."""
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        if others:
            await asyncio.wait(others)

    async def apply(self, op: Op) -> None:
        if isinstance(op, Advance):
            self.now += dt.timedelta(minutes=op.minutes)
        elif isinstance(op, Tick):
            self.now += dt.timedelta(minutes=op.minutes)
            fresh = len(self.network)
            await self.read(list(self.meters))
            if len(self.network) > fresh:
                self.ingest(self.network[fresh:])
        elif isinstance(op, Read):
            await self.read([f"M-{index % len(self.meters)}" for index in op.meters])
        elif isinstance(op, Deliver):
            self.deliver(op)
        elif isinstance(op, Pay):
            self.pay(op)
        elif isinstance(op, Notify):
            if self.orders:
                order = self.orders[op.pick % len(self.orders)]
                self.notify(order, fresh=op.fresh)
        elif isinstance(op, Refund):
            index = op.wallet % len(self.books.wallets)
            order = next((o for o in reversed(self.orders) if o.wallet == index), None) if op.original else None
            self.refunds.append(PendingRefund(self._next("RF"), op, order))
            self.refund_all()
        elif isinstance(op, Relay):
            self.relay()
        elif isinstance(op, Dispatch):
            await self.dispatch(op.rounds)
        elif isinstance(op, Offline):
            self.link.set_offline(f"M-{op.meter % len(self.meters)}", op.offline)
        elif isinstance(op, Crash):
            self.crasher.arm(op.after_statements)
        elif isinstance(op, Restart):
            self.restart("clean")
        elif isinstance(op, Reconcile):
            self.reconcile_payments()
        else:  # pragma: no cover - the union is closed
            raise AssertionError(op)

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.scenario.seed % 10**8:08d}{self.counter:06d}"

    # -- readings ---------------------------------------------------------------------------------------------

    async def read(self, meter_ids: Sequence[str]) -> None:
        for meter_id in meter_ids:
            snapshot = await self.link.read(self.endpoints[meter_id], frozenset({ReadItem.ENERGY}))
            if isinstance(snapshot, MeterSnapshot):
                self.network.append(snapshot)

    def deliver(self, op: Deliver) -> None:
        batch = list(self.network)
        if op.shuffle:
            random.Random(op.shuffle).shuffle(batch)
        batch = batch[: op.count]
        if op.duplicate and self.delivered:
            batch.append(self.delivered[op.shuffle % len(self.delivered)])
        if batch:
            self.ingest(batch)

    def ingest(self, batch: Sequence[MeterSnapshot]) -> None:
        found = snapshot_readings(batch)
        report = self.ingestor.ingest(found)  # a crash raises here: nothing committed, the network keeps them
        assert not report.rejected, report.rejected
        self.books.ingested(found)
        for snapshot in batch:
            if snapshot in self.network:
                self.network.remove(snapshot)
            self.delivered.append(snapshot)

    # -- payments and refunds ---------------------------------------------------------------------------------

    def pay(self, op: Pay) -> None:
        wallet = self.books.wallets[op.wallet % len(self.books.wallets)]
        request = payments.NewOrder(wallet.code, op.amount_fen, "sandbox", "instant", order_no=self._next("PG"))
        placed = payments.create_order(self.engine, self.channels, request, PAYMENT_POLICY, self.now)
        assert isinstance(placed, payments.OrderPlaced), placed
        order = Order(placed.order_no, op.wallet % len(self.books.wallets), op.amount_fen,
                      self.sandbox.pay(placed.order_no, self.now))  # fmt: skip
        self.orders.append(order)
        if op.notify:
            self.notify(order, fresh=False)

    def notify(self, order: Order, *, fresh: bool) -> payments.NotificationOutcome:
        headers, body = self.sandbox.pay(order.order_no, self.now) if fresh else order.notification
        outcome = payments.handle_notification(self.engine, self.channels, "sandbox", headers, body, self.now)
        stale = abs(int(headers["X-Sandbox-Timestamp"]) - int(self.now.timestamp())) > 300
        if stale:
            assert outcome.verdict is payments.Verdict.REJECTED, f"a stale notification was {outcome.verdict}"
        elif outcome.verdict is payments.Verdict.ACCEPTED:
            assert not order.credited, f"order {order.order_no} credited twice"
            self._credit(order)
        else:
            assert outcome.verdict is payments.Verdict.DUPLICATE, outcome
            assert order.credited or order.order_no in self.uncertain, f"{order.order_no}: duplicate of nothing"
            if not order.credited:
                self._credit(order)  # credited by a run that crashed before it could tell us
        return outcome

    def _credit(self, order: Order) -> None:
        order.credited = True
        self.uncertain.discard(order.order_no)
        self.books.wallets[order.wallet].paid_micros += order.amount_fen * FEN

    def reconcile_payments(self) -> None:
        candidates = {o.order_no for o in self.orders if not o.credited}
        self.uncertain |= candidates  # a crash part-way leaves some credited and the report lost
        report = payments.reconcile_pending(self.engine, self.channels, self.now)
        assert not report.failures, report.failures
        known = {o.order_no for o in self.orders}
        assert not known & set(report.expired), f"paid orders expired: {sorted(known & set(report.expired))}"
        for order in self.orders:
            if order.order_no in report.credited:
                assert not order.credited, f"order {order.order_no} credited twice"
                self._credit(order)
        self.uncertain -= candidates

    def _settle_uncertain(self) -> None:
        """After a crash inside reconciliation: the provider's retries tell which orders were credited."""
        for order in self.orders:
            if order.order_no in self.uncertain:
                self.notify(order, fresh=True)

    def refund_all(self) -> None:
        while self.refunds:
            self.refund(self.refunds[0])
            self.refunds.pop(0)

    def refund(self, pending: PendingRefund) -> None:
        op = pending.op
        index = op.wallet % len(self.books.wallets)
        wallet = self.books.wallets[index]
        amount_micros = op.amount_fen * FEN
        order = pending.order
        destination = payments.Destination.ORIGINAL if order is not None else payments.Destination.CASH
        request = payments.RefundRequest(
            pending.refund_no, wallet.code, op.amount_fen, destination, "tenant moved out", OPERATOR,
            order.order_no if order is not None else None,
        )  # fmt: skip
        done = payments.refund(self.engine, self.channels, request, self.now)
        expected_refusal = self._refusal(index, amount_micros, order, op.amount_fen)
        if isinstance(done, payments.Refused):
            assert expected_refusal is not None, f"refund {request} refused: {done}"
            return
        assert expected_refusal is None or done.message == "already recorded", (
            f"refund {request} done ({done}) but the books expected a refusal: {expected_refusal}"
        )
        assert done.state in ("succeeded", "processing", "pending"), done
        wallet.refunded_micros += amount_micros
        if order is not None:
            order.refunded_fen += op.amount_fen

    def _refusal(self, wallet: int, amount_micros: int, order: Order | None, amount_fen: int) -> str | None:
        setup = self.books.wallets[wallet].setup
        if order is not None and not order.credited:
            return "order not paid"
        if order is not None and amount_fen > order.amount_fen - order.refunded_fen:
            return "more than the order has left"
        if self.books.balance(wallet) - amount_micros < -setup.overdraft_yuan * YUAN:
            return "below the overdraft limit"
        return None

    # -- prepaid control and commands -------------------------------------------------------------------------

    def relay(self) -> None:
        prepaid.due_trips(self.engine, self.now)
        relayed = prepaid.process_outbox(self.engine, self.now)
        assert not relayed.problems, relayed.problems

    async def dispatch(self, rounds: int) -> None:
        for _ in range(min(rounds, MAX_DISPATCH_ROUNDS)):
            if not await self.dispatcher.run_once():
                return

    # -- the final phase --------------------------------------------------------------------------------------

    async def final(self) -> None:
        """Everything outstanding is delivered, then the clock goes outside every window and commands settle."""
        self.crasher.left = None
        for meter_id in self.meters:
            self.link.set_offline(meter_id, False)
        self.refund_all()
        if self.network:
            self.ingest(list(self.network))
        for order in self.orders:
            if not order.credited:
                self.notify(order, fresh=True)
        self.relay()
        await self.settle_commands()
        self.now = outside_windows(self.now)
        self.log.append(f"final clock {self.now.astimezone(TZ).isoformat()}")
        self.relay()
        await self.settle_commands()

    async def settle_commands(self) -> None:
        for _ in range(FINAL_SETTLE_STEPS):
            await self.dispatch(MAX_DISPATCH_ROUNDS)
            if not self.open_commands():
                return
            self.now += FINAL_STEP
        raise AssertionError(f"commands still open after the final phase: {self.open_commands()}")

    def open_commands(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {s.value: n for s, n in queue.count_by_state(conn).items() if s in queue.OPEN and n}


def outside_windows(after: dt.datetime) -> dt.datetime:
    """10:00 site-local on the first workday after ``after``: outside every window in ``WINDOWS``."""
    calendar = SiteCalendar.china()
    day = after.astimezone(TZ).date() + dt.timedelta(days=1)
    while calendar.day_type(day) is not DayType.WORKDAY:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(10, 0), tzinfo=TZ).astimezone(dt.UTC)


# -- the auditor's checks -------------------------------------------------------------------------------------


def closed_form_micros(book: MeterBook) -> int:
    """What a meter's whole consumption costs, floored once: the sum of its deductions must equal this."""
    if book.baseline is None or book.state.last_bands_wh is None:
        return 0
    assert book.baseline.bands_wh is not None
    if book.tariff == "flat":
        assert book.state.last_total_wh is not None
        return (book.state.last_total_wh - book.baseline.total_wh) * FLAT_PRICE // 1000
    prices = (TOU_PRICES["sharp"], TOU_PRICES["peak"], TOU_PRICES["flat"], TOU_PRICES["valley"])
    nanos = sum(
        (last - first) * price
        for last, first, price in zip(book.state.last_bands_wh, book.baseline.bands_wh, prices, strict=True)
    )
    return nanos // 1000


def audit(world: World) -> list[str]:
    """Every difference between the database and the auditor's books (empty: exact)."""
    problems: list[str] = []
    books = world.books
    with world.engine.connect() as conn:
        problems += [f"ledger audit: {d.subject}: {d.message}" for d in ledger_store.audit(conn)]
        for index, wallet in enumerate(books.wallets):
            stored = ledger_store.balance(conn, wallet.code).balance_micros
            if stored != books.balance(index):
                problems.append(f"{wallet.code}: balance {stored} micros, the books say {books.balance(index)}")
        billed = conn.execute(select(readings.c.id, readings.c.amount_micros, readings.c.entry_id)).all()
        entries = dict(
            conn.execute(
                select(ledger_entries.c.idempotency_key, func.count())
                .where(ledger_entries.c.idempotency_key.like("reading:%"))
                .group_by(ledger_entries.c.idempotency_key)
            ).all()
        )
        problems += _reading_problems(books, billed, entries)
        problems += _reconcile_problems(world, conn)
    for book in books.meters.values():
        expected = closed_form_micros(book)
        if sum(book.charged.values()) != expected:
            problems.append(f"meter {book.meter_id}: deductions {sum(book.charged.values())} != closed form {expected}")
    return problems


def _reading_problems(books: Books, billed: Sequence[Any], entries: dict[str, int]) -> list[str]:
    problems: list[str] = []
    expected = {rid: amount for book in books.meters.values() for rid, amount in book.charged.items()}
    charged_in_db = {str(r.id): int(r.amount_micros) for r in billed if r.entry_id is not None}
    if charged_in_db != expected:
        extra = sorted(set(charged_in_db.items()) ^ set(expected.items()))[:5]
        problems.append(f"billed readings differ from the books (first differences: {extra})")
    twice = [key for key, count in entries.items() if count != 1]
    if twice:
        problems.append(f"readings billed more than once: {twice[:5]}")
    if set(entries) != {f"reading:{rid}" for rid in expected}:
        problems.append("ledger reading entries differ from the books")
    if len({str(r.id) for r in billed}) != len(billed) or {str(r.id) for r in billed} != books.seen:
        problems.append("stored readings differ from the readings delivered")
    return problems


def _reconcile_problems(world: World, conn: Any) -> list[str]:
    problems: list[str] = []
    first = START.astimezone(TZ).date()
    last = world.now.astimezone(TZ).date()
    totals: dict[str, list[int]] = {w.code: [0, 0, 0, 0] for w in world.books.wallets}
    day = first
    while day <= last:
        report = reconcile.reconcile(conn, day, ZONE)
        problems += [f"reconcile {day}: {d.subject}: {d.message}" for d in report.discrepancies]
        for flow in report.wallets:
            sums = totals[flow.subject]
            sums[0] += flow.payments_micros
            sums[1] += flow.deductions_micros
            sums[2] += flow.refunds_micros
            sums[3] += flow.other_micros
        day += dt.timedelta(days=1)
    for index, wallet in enumerate(world.books.wallets):
        expected = [wallet.paid_micros, world.books.deducted(index), wallet.refunded_micros, 0]
        if totals[wallet.code] != expected:
            problems.append(f"{wallet.code}: reconciled (payments, deductions, refunds, other) "
                            f"{totals[wallet.code]}, the books say {expected}")  # fmt: skip
    return problems


def relay_problems(world: World) -> list[str]:
    """After the final phase: each meter's own relay against the wallet's balance and the platform's intent."""
    problems: list[str] = []
    with world.engine.connect() as conn:
        unprocessed = conn.execute(
            select(func.count()).where(outbox.c.kind.in_(("trip", "close")), outbox.c.processed_at.is_(None))
        ).scalar_one()
        if unprocessed:
            problems.append(f"{unprocessed} trip/close outbox rows never relayed")
        for index, wallet in enumerate(world.books.wallets):
            setup = wallet.setup
            balance = world.books.balance(index)
            state = prepaid.wallet_state(conn, wallet.account_id)
            intent_on = True if state is None else state.supply_on
            short = balance <= -setup.overdraft_yuan * YUAN
            for meter_id in wallet.meters:
                relay_open = world.meters[meter_id].relay_open()
                what = f"{wallet.code} ({setup}, balance {balance}) meter {meter_id}: relay "
                what += "open" if relay_open else "closed"
                if relay_open == intent_on:
                    problems.append(f"{what}, but the platform's intent is supply {'on' if intent_on else 'off'}")
                if not short and balance >= setup.reconnect_yuan * YUAN and relay_open:
                    problems.append(f"{what}: above the reconnect threshold, it must be closed")
                if short and not setup.protect and not relay_open:
                    problems.append(f"{what}: at or below the trip line outside every window, it must be open")
                if setup.protect and relay_open:
                    problems.append(f"{what}: power-protected, it must be closed")
    return problems


# -- databases ------------------------------------------------------------------------------------------------


class Databases:
    """A fresh, migrated database per scenario: a copy of a pristine SQLite file, or PostgreSQL emptied.

    One engine (with the crash injector attached) serves every scenario of a test; it holds no connection
    between scenarios. The SQLite file lives in ``/dev/shm`` when there is one (still a file database, with its
    WAL and locks; only the disk is memory): the machine's disk, shared by parallel runs, would otherwise set
    the pace. PostgreSQL is emptied by ``DELETE`` in one transaction (``TRUNCATE`` of every table costs half a
    second).
    """

    def __init__(self, url: str, workdir: Path) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            shm = Path("/dev/shm")
            self.workdir = Path(tempfile.mkdtemp(prefix="pg-sim-", dir=shm if shm.is_dir() else workdir))
            self.pristine = self.workdir / "pristine.db"
            shutil.copyfile(url.removeprefix("sqlite:///"), self.pristine)
            self.target = self.workdir / "simulation.db"
            url = f"sqlite:///{self.target}"
        self.url = url
        self.engine = make_engine(url)
        self.crasher = Crasher()
        self.crasher.attach(self.engine)

    def fresh(self) -> Engine:
        self.engine.dispose()
        if self.sqlite:
            for suffix in ("-wal", "-shm"):
                Path(f"{self.target}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(self.pristine, self.target)
        else:
            with self.engine.begin() as conn:
                for table in reversed(schema.metadata.sorted_tables):
                    if table.name != "alembic_version":
                        conn.execute(table.delete())
            self.engine.dispose()
        return self.engine

    def close(self) -> None:
        self.engine.dispose()
        if self.sqlite:
            shutil.rmtree(self.workdir, ignore_errors=True)


def play(databases: Databases, scenario: Scenario) -> tuple[list[str], list[str], World]:
    """Run ``scenario`` on a fresh database; (problems found, the log of what ran, the world)."""
    log: list[str] = []
    world = World(databases.fresh(), databases.crasher, scenario, log)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        await world.run()

    try:
        asyncio.run(main())
        problems = audit(world) + relay_problems(world)
    finally:
        world.engine.dispose()
    return problems, log, world
