"""Wake-ups across processes: a transaction that adds outbox rows or queues meter commands wakes their consumers.

Without this, the outbox relay (worker, head-end) and the command dispatcher (head-end) find new rows only at
their next poll, so the delay from a payment to its close command depends on polling intervals in two
processes. With it:

- ``install(engine)`` (done by ``store.db.make_engine`` for every engine) watches the statements a transaction
  runs. A transaction that inserts into ``outbox``, ``meter_commands`` or ``ingest_batches`` sends ``NOTIFY
  powergate_outbox`` / ``powergate_commands`` / ``powergate_ingest`` inside itself, just before it commits
  (PostgreSQL delivers a notification only if, and when, its transaction commits; several in one transaction
  fold into one). After the commit, when the
  connection goes back to the pool, the same process's waiters are signalled directly (this is the whole
  mechanism on SQLite, where roles share one process).
- ``subscribe(engine, channel)`` gives an asyncio ``Subscription``: ``await sub.wait(timeout_s)`` returns when
  the channel fired (True) or the timeout passed (False). On PostgreSQL the first subscription of a process
  starts one listener thread with its own connection (``LISTEN`` on every channel) that signals the waiters of
  this process; it reconnects with a capped back-off, and on every (re)connect it signals every channel once,
  because notifications sent while it was not listening are gone.
- ``forward(engine, channel, callback, stop)`` calls ``callback()`` on each wake-up (``Dispatcher.wake``).

Invariants: a wake-up is only a hint. Consumers keep their polling interval as the upper bound, so a lost
notification (listener reconnecting, a connection held outside the pool) delays work by at most one poll and
never loses it; a spurious one costs one empty query. Nothing here writes data. Bounded: one listener thread and
one connection per database per process, and waiters are one ``asyncio.Event`` per subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger(__name__)

OUTBOX = "powergate_outbox"
COMMANDS = "powergate_commands"
INGEST = "powergate_ingest"
"""A head-end in queue mode wrote a batch of readings (``ingest_batches``): the workers' ingest job runs."""
CHANNELS = (OUTBOX, COMMANDS, INGEST)
_WATCHED = (
    ("INSERT INTO outbox ", OUTBOX),
    ("INSERT INTO meter_commands ", COMMANDS),
    ("INSERT INTO ingest_batches ", INGEST),
)
"""Statement prefixes (as SQLAlchemy compiles an ``insert(table)``) and the channel each one wakes."""
_PENDING = "powergate_wakeup_pending"
"""``Connection.info`` key: channels the open transaction will notify when it commits."""
_COMMITTED = "powergate_wakeup_committed"
"""Pool record ``info`` key: channels whose transaction committed; signalled in-process at check-in."""
LISTEN_POLL_S = 0.5
"""How often the listener thread looks at its stop flag between notifications."""
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5


# -- the sending side: hooks on the engine -------------------------------------------------------------------


def install(engine: Engine) -> None:
    """Watch ``engine``'s transactions; idempotent (an engine gets the hooks once)."""
    if getattr(engine, "_powergate_wakeup", False):
        return
    engine._powergate_wakeup = True  # type: ignore[attr-defined]
    postgres = engine.dialect.name == "postgresql"

    def before_cursor_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        for prefix, channel in _WATCHED:
            if statement.startswith(prefix):
                conn.info.setdefault(_PENDING, set()).add(channel)

    def on_commit(conn: Any) -> None:
        channels = conn.info.pop(_PENDING, None)
        if not channels:
            return
        if postgres:  # in the transaction, just before COMMIT: delivered if and when it commits
            dbapi = conn.connection.dbapi_connection
            for channel in sorted(channels):
                dbapi.execute(f"NOTIFY {channel}")
        conn.info.setdefault(_COMMITTED, set()).update(channels)  # the pool record's info: read at check-in

    def on_rollback(conn: Any) -> None:
        conn.info.pop(_PENDING, None)

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        channels = record.info.pop(_COMMITTED, None) if record is not None else None
        for channel in channels or ():
            HUB.signal(channel)

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    event.listen(engine, "commit", on_commit)
    event.listen(engine, "rollback", on_rollback)
    event.listen(engine, "checkin", on_checkin)  # on the engine: it follows the pool across dispose()


def notify(conn: Any, channel: str) -> None:
    """Mark the transaction of ``conn`` (a SQLAlchemy ``Connection``) to wake ``channel`` when it commits."""
    assert channel in CHANNELS, channel
    conn.info.setdefault(_PENDING, set()).add(channel)


# -- the receiving side ---------------------------------------------------------------------------------------


class Subscription:
    """One waiter on one channel, bound to the event loop it was made in; close it (or use ``with``)."""

    def __init__(self, hub: Hub, key: str | None, channel: str) -> None:
        self.channel = channel
        self._hub = hub
        self._key = key
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.fired = 0
        """Wake-ups received (several before one ``wait`` count once each)."""

    def _signal(self) -> None:
        def fire() -> None:
            self.fired += 1
            self._event.set()

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(fire)

    @property
    def listening(self) -> bool:
        """True once notifications from other processes can reach this subscription (always, on SQLite)."""
        return self._hub.listening(self._key)

    async def wait(self, timeout_s: float) -> bool:
        """Until the channel fires (True) or ``timeout_s`` passes (False); a wake-up before the call counts."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Listener(threading.Thread):
    """``LISTEN`` on every channel over one autocommit connection; signals ``hub`` for each notification."""

    def __init__(self, hub: Hub, dsn: str) -> None:
        super().__init__(name="powergate-wakeup", daemon=True)
        self.hub = hub
        self.dsn = dsn
        self.stopping = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        import psycopg

        backoff_s = RECONNECT_MIN_S
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")
                    self.connected.set()
                    backoff_s = RECONNECT_MIN_S
                    for channel in CHANNELS:  # what was sent while we were not listening is gone: look once
                        self.hub.signal(channel)
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL_S):
                            self.hub.signal(note.channel)
            except psycopg.Error as error:
                log.warning("wake-up listener: %s; reconnecting in %.1f s", error, backoff_s)
            self.connected.clear()
            self.stopping.wait(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)


class Hub:
    """The process's waiters by channel, and one listener per PostgreSQL database that has any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[Subscription]] = {channel: set() for channel in CHANNELS}
        self._listeners: dict[str, tuple[_Listener, int]] = {}

    def signal(self, channel: str) -> None:
        with self._lock:
            waiting = list(self._subscriptions.get(channel, ()))
        for subscription in waiting:
            subscription._signal()

    def subscribe(self, engine: Engine, channel: str) -> Subscription:
        assert channel in CHANNELS, channel
        key = None
        if engine.dialect.name == "postgresql":
            key = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        subscription = Subscription(self, key, channel)
        with self._lock:
            self._subscriptions[channel].add(subscription)
            if key is not None:
                listener, count = self._listeners.get(key) or (_Listener(self, key), 0)
                if count == 0:
                    listener.start()
                self._listeners[key] = (listener, count + 1)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        stopped: _Listener | None = None
        with self._lock:
            if subscription not in self._subscriptions[subscription.channel]:
                return
            self._subscriptions[subscription.channel].discard(subscription)
            key = subscription._key
            if key is not None:
                listener, count = self._listeners[key]
                if count == 1:
                    del self._listeners[key]
                    stopped = listener
                else:
                    self._listeners[key] = (listener, count - 1)
        if stopped is not None:
            stopped.stopping.set()
            stopped.join(LISTEN_POLL_S * 4 + CONNECT_TIMEOUT_S)

    def listening(self, key: str | None) -> bool:
        if key is None:
            return True
        with self._lock:
            entry = self._listeners.get(key)
        return entry is not None and entry[0].connected.is_set()


HUB = Hub()


def subscribe(engine: Engine, channel: str) -> Subscription:
    """A waiter on ``channel`` for writes to ``engine``'s database (call it inside the running event loop)."""
    return HUB.subscribe(engine, channel)


async def forward(engine: Engine, channel: str, callback: Callable[[], object], stop: asyncio.Event) -> None:
    """Call ``callback()`` each time ``channel`` fires, until ``stop`` is set."""
    with subscribe(engine, channel) as subscription:
        while not stop.is_set():
            if await subscription.wait(LISTEN_POLL_S):
                callback()
