"""Group commit: many placements per transaction, each still cooldown-checked.

Consumers `submit` a placement and await its result. One writer thread per
process collects whatever arrived within `PLACE_INGEST_WINDOW` seconds (at most
`PLACE_INGEST_MAX_BATCH`) and commits them together with `placements_commit`:
validation from rows read once per batch, the cooldowns taken by one conditional
UPDATE (a player racing with itself wins once), one seq range, one write per
touched chunk, one bulk insert of history, one broadcast. Every submitter learns
its result only after the commit; if the transaction fails, all of them get the
database error (`unavailable`) and nothing of the batch is written.
"""

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import BooleanField, Count, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone
from psycopg_pool import PoolTimeout

from . import broadcast, metrics, services, writer_turn
from . import exceptions as exc
from .models import Canvas, Cooldown, Placement, Player
from .sql import slices, sql_in

log = logging.getLogger("canvas.ingest")
# How long a group whose connection was cut waits for a working one before it
# gives up and answers `unavailable` (see _connection_lost).
RETRY_WAIT = 1.0
# How long the look after a failed COMMIT waits for that transaction to end.
LOOKUP_WAIT = 2.0
# One key=value line per placement and refusal; route or silence it on its own.
events = logging.getLogger("canvas.placements")


@dataclass(frozen=True)
class PlaceRequest:
    canvas_id: int
    player_id: int | None
    x: int
    y: int
    color: int
    ip: str | None = None


Outcome = services.PlacementResult | exc.PlaceError


@services.checked_again_if_resized
def placements_commit(
    requests: list[PlaceRequest], progress: dict | None = None
) -> list[Outcome]:
    """Commit a batch in one transaction; return one outcome per request, in order.

    Raises DatabaseError if the transaction fails: then nothing was written,
    unless it failed at the COMMIT itself (see `committed_anyway`).
    `progress`, if given, records how far the attempt got: "connection", the
    driver's connection the transaction began on; "now", the time stamped on
    its rows, by canvas id; "outcomes", once every statement succeeded and
    only the COMMIT remains (a failure after that is ambiguous).
    """
    progress = {} if progress is None else progress
    progress.pop("outcomes", None)  # a resize's second run starts afresh
    outcomes: list[Outcome | None] = [None] * len(requests)
    by_canvas: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        by_canvas.setdefault(request.canvas_id, []).append(index)
    with writer_turn.taken(), transaction.atomic():
        progress["connection"] = connection.connection
        progress["now"] = stamps = {}
        # Canvases locked in id order: two processes' batches that both span
        # canvases A and B would otherwise each hold one and wait for the other.
        for canvas_id in sorted(by_canvas):
            indexes = by_canvas[canvas_id]
            batch = [requests[i] for i in indexes]
            # Each canvas's time once the ones before it are locked and written:
            # its cooldowns and history stamps do not lag behind that wait.
            stamps[canvas_id] = now = timezone.now()
            results = _commit_canvas(canvas_id, batch, now)
            for i, outcome in zip(indexes, results, strict=True):
                outcomes[i] = outcome
        progress["outcomes"] = outcomes
    return outcomes


def committed_anyway(requests: list[PlaceRequest], progress: dict) -> bool:
    """After a failure at COMMIT (the connection died as the COMMIT went out):
    whether the batch's rows are in the database after all.

    Looked up on a fresh connection: the batch's first accepted placement with
    its seq, pixel, colour, player and time stamp (a transaction commits whole,
    so that row alone tells), once the failed transaction has truly ended: it
    holds its canvas's row lock until then (the server may still be finishing
    the COMMIT, a slow disk or a synchronous standby), so the look waits for
    that lock, at most LOOKUP_WAIT. Without an accepted placement nothing was
    at stake (refusals write nothing). Raises DatabaseError if it cannot look.
    """
    pairs = zip(requests, progress["outcomes"], strict=True)
    accepted = [(r, o) for r, o in pairs if isinstance(o, services.PlacementResult)]
    if not accepted:
        return True
    request, outcome = accepted[0]
    connection.close()
    with transaction.atomic():  # SQLite: BEGIN IMMEDIATE waits for any writer
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SET LOCAL lock_timeout = '{int(LOOKUP_WAIT * 1000)}ms'"
                )
                table = connection.ops.quote_name(Canvas._meta.db_table)
                cursor.execute(
                    f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE",
                    [request.canvas_id],
                )
        return Placement.objects.filter(
            canvas_id=request.canvas_id,
            seq=outcome.seq,
            x=request.x,
            y=request.y,
            color=request.color,
            player_id=request.player_id,
            placed_at=progress["now"][request.canvas_id],
        ).exists()


def _publish_late(requests: list[PlaceRequest], outcomes: list[Outcome]) -> None:
    """Publish a batch found committed after its COMMIT failed (its on-commit
    publish never ran), so watchers see it now, not at the hubs' next refill."""
    by_canvas: dict[int, list] = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, services.PlacementResult):
            update = (outcome.seq, request.x, request.y, request.color)
            by_canvas.setdefault(request.canvas_id, []).append(update)
    for canvas_id, updates in by_canvas.items():
        broadcast.publish(canvas_id=canvas_id, updates=updates)


def _connection_lost(progress: dict, error: Exception) -> bool:
    """Whether a failed batch died with its connection before its COMMIT.

    Then nothing of it was written and it may run again on a fresh connection:
    a connection the database cut while the writer held it between batches
    (a restarted or failed-over server, an administrator's pg_terminate_backend,
    a proxy's idle timeout) fails its next statement, although the database
    is there. A failure at COMMIT is not retried (it may have committed), nor
    one that never got a connection (the database is away: retrying would
    only make the players wait longer for `unavailable`).
    """
    if not isinstance(error, OperationalError) or "outcomes" in progress:
        return False
    # psycopg's Connection.closed: the server or the network ended it (other
    # drivers' connections have no such flag and are never retried).
    if getattr(progress.get("connection"), "closed", False) is not True:
        return False
    return _database_answers()


def _database_answers() -> bool:
    """Whether the database answers: the pool hands out a working connection
    within RETRY_WAIT, or, when every pooled connection is in use, the server
    takes one of its own.

    A dead connection alone says nothing about the database: a cut connection
    of a database that is still there, or an outage. Only the first is worth
    a retry; in an outage the retry would hold the group until the pool's own
    timeout (PLACE_DB_POOL_TIMEOUT) before it answered `unavailable`.
    """
    pool = getattr(connection, "pool", None)
    if pool is None:
        return True  # no pool: the retry's connect fails as fast as this would
    try:
        conn = pool.getconn(timeout=RETRY_WAIT)  # checked by the pool
    except PoolTimeout:
        # No working connection within RETRY_WAIT: an outage, or only a busy
        # pool, every connection of it in use (a storm of handshakes). Only
        # then is the server itself asked; in an outage the pool has lost
        # connections, and the batch is answered at once.
        stats = pool.get_stats()
        busy = stats.get("pool_size", 0) >= pool.max_size
        return busy and not stats.get("pool_available") and _server_answers()
    except Exception:
        return False
    pool.putconn(conn)
    return True


def _server_answers() -> bool:
    """Whether the database server takes a new connection of its own, outside
    the pool (within 2 s an address: libpq counts whole seconds)."""
    params = connection.get_connection_params()
    params["connect_timeout"] = max(2, round(RETRY_WAIT))
    try:
        with connection.Database.connect(**params):
            return True
    except Exception:
        return False


def _commit_canvas(
    canvas_id: int, batch: list[PlaceRequest], now: datetime
) -> list[Outcome]:
    canvas = Canvas.objects.filter(pk=canvas_id).first()
    if canvas is None:
        return [exc.PlaceError("bad_request", "No such canvas.")] * len(batch)
    outcomes: list[Outcome | None] = _validate(canvas, batch, now)
    candidates = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if settings.PLACE_IP_LIMIT > 0:
        winners = _take_one_by_one(canvas, batch, candidates, outcomes, now)
    else:
        winners = _take_set_based(canvas, batch, candidates, outcomes, now)
    if winners:
        _write(canvas, batch, winners, outcomes, now)
    return outcomes


def _validate(canvas: Canvas, batch: list[PlaceRequest], now: datetime) -> list:
    """None for each request that may go on to its cooldown, else its refusal."""
    ids = sorted({r.player_id for r in batch if r.player_id})
    missing, banned, young = _players_screen(ids, now)
    outcomes: list = []
    for request in batch:
        player_id = request.player_id
        try:
            services.player_check(
                known=bool(player_id) and player_id not in missing,
                banned=player_id in banned,
            )
            services.placement_check(
                canvas=canvas, x=request.x, y=request.y, color=request.color
            )
            if player_id in young:
                services.account_age_check(created=young[player_id], now=now)
        except exc.PlaceError as error:
            outcomes.append(error)
            continue
        outcomes.append(None)
    return outcomes


def _players_screen(
    ids: list[int], now: datetime
) -> tuple[set[int], set[int], dict[int, datetime]]:
    """Which of these players are gone, banned now, or too new to place.

    Only the exceptions come back, not a row per player: building 500 Player
    objects took 33 ms of a batch, these queries about 2 (bench/RESULTS.md).
    """
    if not ids:
        return set(), set(), {}
    table = connection.ops.quote_name(Player._meta.db_table)
    where, params = sql_in(f"{table}.id", ids)
    rows = Player.objects.filter(RawSQL(where, params, output_field=BooleanField()))
    # One round trip in the usual case: counts first, ids only if any is off.
    counts = rows.aggregate(
        known=Count("pk"), banned=Count("pk", filter=Q(banned_until__gt=now))
    )
    banned: set[int] = set()
    if counts["banned"]:
        banned = set(rows.filter(banned_until__gt=now).values_list("pk", flat=True))
    missing: set[int] = set()
    if counts["known"] != len(ids):
        missing = set(ids) - set(rows.values_list("pk", flat=True))
    young: dict[int, datetime] = {}
    if settings.PLACE_MIN_ACCOUNT_AGE > 0:
        cut = now - timedelta(seconds=settings.PLACE_MIN_ACCOUNT_AGE)
        joined = rows.annotate(joined=Coalesce("user__date_joined", "created_at"))
        young = dict(joined.filter(joined__gt=cut).values_list("pk", "joined"))
    return missing, banned, young


def _take_set_based(canvas, batch, candidates, outcomes, now) -> list[int]:
    """Start the cooldown of every candidate whose cooldown has ended: one UPDATE.

    A player twice in the batch wins with the first request only, unless the
    canvas has no cooldown (then every one of them goes in, in order, as if
    sent a moment apart). Rows are touched in player order, so concurrent
    batches cannot deadlock.
    """
    first: dict[int, int] = {}
    again: dict[int, list[int]] = {}  # a player's later requests, cooldown 0
    for i in candidates:
        player_id = batch[i].player_id
        if player_id not in first:
            first[player_id] = i
        elif canvas.cooldown_seconds == 0:
            again.setdefault(player_id, []).append(i)
        else:
            outcomes[i] = _cooldown_error(float(canvas.cooldown_seconds))
    if not first:
        return []
    player_ids = sorted(first)
    taken = _cooldowns_take(canvas, player_ids, now)
    losers = [p for p in player_ids if p not in taken]
    if losers:
        rows = Cooldown.objects.filter(canvas_id=canvas.pk, player_id__in=losers)
        for player_id, next_at in rows.values_list("player_id", "next_at"):
            refusal = _cooldown_error((next_at - now).total_seconds())
            for i in [first[player_id], *again.get(player_id, [])]:
                outcomes[i] = refusal
    return sorted(i for p in taken for i in [first[p], *again.get(p, [])])


def _cooldowns_take(canvas: Canvas, player_ids: list[int], now: datetime) -> set:
    """The players whose cooldown this call started (each at most once).

    One conditional UPDATE for players with a cooldown row; one INSERT ... ON
    CONFLICT DO NOTHING for first-timers, where a row inserted meanwhile by
    another process counts as a loss, as a concurrent placement would.
    """
    table = Cooldown._meta.db_table
    ops = connection.ops
    next_at = ops.adapt_datetimefield_value(
        now + timedelta(seconds=canvas.cooldown_seconds)
    )
    now_db = ops.adapt_datetimefield_value(now)
    taken: set[int] = set()
    with connection.cursor() as cursor:
        for ids in slices(player_ids, 500):
            where, params = sql_in("player_id", ids)
            cursor.execute(
                f"UPDATE {table} SET next_at = %s WHERE canvas_id = %s"
                f" AND {where} AND next_at <= %s RETURNING player_id",
                [next_at, canvas.pk, *params, now_db],
            )
            taken.update(row[0] for row in cursor.fetchall())
        rest = [p for p in player_ids if p not in taken]
        for ids in slices(rest, 500):
            where, params = sql_in("player_id", ids)
            cursor.execute(
                f"SELECT player_id FROM {table} WHERE canvas_id = %s AND {where}",
                [canvas.pk, *params],
            )
            have = {row[0] for row in cursor.fetchall()}
            new = [p for p in ids if p not in have]
            if not new:
                continue
            cursor.execute(
                f"INSERT INTO {table} (canvas_id, player_id, next_at) VALUES "
                + ",".join(["(%s, %s, %s)"] * len(new))
                + " ON CONFLICT (canvas_id, player_id) DO NOTHING RETURNING player_id",
                [v for p in new for v in (canvas.pk, p, next_at)],
            )
            taken.update(row[0] for row in cursor.fetchall())
    return taken


def _take_one_by_one(canvas, batch, candidates, outcomes, now) -> list[int]:
    """With a per-address limit: each placement's checks in its own savepoint."""
    winners = []
    for i in candidates:
        request = batch[i]
        try:
            with transaction.atomic():
                services._cooldown_take(
                    canvas=canvas, player_id=request.player_id, now=now
                )
                services._ip_quota_take(canvas=canvas, ip=request.ip, now=now)
        except exc.PlaceError as error:
            outcomes[i] = error
            continue
        winners.append(i)
    return winners


def _cooldown_error(remaining: float) -> exc.PlaceError:
    return exc.PlaceError("cooldown", exc.MSG_COOLDOWN, retry_after=max(0.0, remaining))


def _write(canvas, batch, winners, outcomes, now) -> None:
    first = services.seqs_allocate(
        canvas_id=canvas.pk, count=len(winners), size=(canvas.width, canvas.height)
    )
    changes = [(batch[i].x, batch[i].y, batch[i].color) for i in winners]
    previous = services.chunks_apply(canvas_id=canvas.pk, changes=changes)
    rows = []
    updates = []
    for offset, i in enumerate(winners):
        request, seq = batch[i], first + offset
        rows.append(
            (
                seq,
                request.x,
                request.y,
                request.color,
                previous[offset],
                request.player_id,
            )
        )
        updates.append((seq, request.x, request.y, request.color))
        outcomes[i] = services.PlacementResult(
            seq=seq, cooldown_remaining=float(canvas.cooldown_seconds)
        )
    _placements_insert(canvas.pk, rows, now)
    broadcast.publish_on_commit(canvas_id=canvas.pk, updates=updates)


VARYING = ("seq", "x", "y", "color", "previous_color", "player_id")


def _placements_insert(canvas_id: int, rows: list[tuple], now: datetime) -> None:
    proto = Placement(canvas_id=canvas_id, placed_at=now, seq=0, x=0, y=0, color=0)
    proto.previous_color = 0
    services.placements_insert(proto=proto, varying=VARYING, rows=rows)


class Batcher:
    """The process's writer thread; `submit` from any event loop."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.batches = 0

    async def submit(self, request: PlaceRequest) -> services.PlacementResult:
        """Queue a placement; return after its batch commits, or raise."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.inbox.put((request, loop, future))
        return await future

    def _ensure_thread(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="canvas-ingest", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=settings.PLACE_INGEST_IDLE_CLOSE)
            except queue.Empty:
                # Idle: give the connection back (tests drop their database)
                # and sleep until the next placement, not in 50 ms polls.
                connection.close()
                item = self.inbox.get()
            items = [item]
            self._collect(items)
            self._commit(items)

    def _collect(self, items: list) -> None:
        deadline = time.monotonic() + settings.PLACE_INGEST_WINDOW
        limit = settings.PLACE_INGEST_MAX_BATCH
        while len(items) < limit:
            wait = deadline - time.monotonic()
            try:
                if wait > 0:
                    items.append(self.inbox.get(timeout=wait))
                else:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                return

    def _attempt(self, requests: list[PlaceRequest]) -> list[Outcome]:
        """`placements_commit`, with the failures that need not fail the
        players: a connection cut before the COMMIT (run once more on a fresh
        one), and a COMMIT that failed but had committed (either attempt)."""
        progress: dict = {}
        try:
            return self._committed(requests, progress)
        except DatabaseError as error:
            if not _connection_lost(progress, error):
                raise
            log.warning(
                "batch of %d lost its connection before commit (%s);"
                " running it again on a fresh one",
                len(requests),
                error,
            )
        connection.close()
        return self._committed(requests, {})

    def _committed(self, requests: list[PlaceRequest], progress: dict) -> list:
        """`placements_commit`; after a failure at the COMMIT itself, what the
        database holds decides: the outcomes if it committed, else the error."""
        try:
            return placements_commit(requests, progress)
        except DatabaseError as error:
            if "outcomes" not in progress:
                raise
            try:
                committed = committed_anyway(requests, progress)
            except DatabaseError:
                log.error(
                    "batch of %d failed at COMMIT and could not be looked up:"
                    " it may have committed",
                    len(requests),
                )
                raise error from None
            if not committed:
                raise
            log.warning(
                "batch of %d failed at COMMIT (%s) but had committed",
                len(requests),
                error,
            )
            _publish_late(requests, progress["outcomes"])
            return progress["outcomes"]

    def _commit(self, items: list) -> None:
        started = time.perf_counter()
        requests = [request for request, _, _ in items]
        try:
            outcomes = self._attempt(requests)
        except Exception as error:
            if isinstance(error, DatabaseError):
                log.warning("batch of %d failed: %s", len(items), error)
            else:
                log.exception("batch of %d failed", len(items))
            connection.close()
            outcomes = [error] * len(items)
        self.batches += 1
        metrics.ingest_batch(size=len(items), seconds=time.perf_counter() - started)
        # One hand-back per event loop, not per placement: each
        # call_soon_threadsafe writes to the loop's wake-up pipe, a system call
        # apiece (hundreds a batch) on the thread that should be committing.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (request, loop, future), outcome in zip(items, outcomes, strict=True):
            _log_outcome(request, outcome)
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, results)
            except RuntimeError:  # that loop has closed; nobody is waiting
                pass


def _resolve_all(results: list[tuple[asyncio.Future, object]]) -> None:
    for future, outcome in results:
        if future.done():  # its submitter was cancelled (the socket went)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _log_outcome(request: PlaceRequest, outcome) -> None:
    if isinstance(outcome, services.PlacementResult):
        metrics.placement_accepted()
        events.info(
            "event=placement canvas=%s player=%s x=%s y=%s color=%s seq=%s ip=%s",
            request.canvas_id,
            request.player_id,
            request.x,
            request.y,
            request.color,
            outcome.seq,
            request.ip,
        )
        return
    code = outcome.code if isinstance(outcome, exc.PlaceError) else "unavailable"
    metrics.placement_rejected(code)
    events.info(
        "event=rejection canvas=%s player=%s x=%s y=%s code=%s ip=%s",
        request.canvas_id,
        request.player_id,
        request.x,
        request.y,
        code,
        request.ip,
    )


batcher = Batcher()
