"""Writes: placements, cooldowns, seqs, board and history, canvas creation."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from canvas import exceptions as exc
from canvas import selectors, services
from canvas.models import Canvas, Chunk, Connection, Cooldown, Placement, Player


@pytest.fixture
def player(db):
    return Player.objects.create(name="alice")


def place(canvas, player, x=1, y=2, color=5):
    return services.placement_create(
        canvas_id=canvas.pk,
        player_id=player.pk if player else None,
        x=x,
        y=y,
        color=color,
    )


def test_placement_writes_board_history_and_next_seq(make_canvas, player):
    canvas = make_canvas(cooldown=0)
    first = place(canvas, player, x=3, y=4, color=5)
    second = place(canvas, player, x=3, y=4, color=7)
    assert (first.seq, second.seq) == (1, 2)
    snapshot = selectors.board_snapshot(canvas=canvas)
    assert snapshot.data[4 * canvas.width + 3] == 7
    assert snapshot.seq == 2
    history = list(
        Placement.objects.order_by("seq").values_list("seq", "color", "previous_color")
    )
    assert history == [(1, 5, 0), (2, 7, 5)]


def test_second_placement_within_cooldown_is_refused_with_retry_after(
    make_canvas, player
):
    canvas = make_canvas(cooldown=300)
    result = place(canvas, player)
    assert result.cooldown_remaining == 300
    with pytest.raises(exc.PlaceError) as error:
        place(canvas, player, x=2)
    assert error.value.code == "cooldown"
    assert 299 < error.value.retry_after <= 300
    assert Placement.objects.count() == 1
    assert Canvas.objects.get(pk=canvas.pk).seq == 1


def test_cooldown_ends_after_its_time(make_canvas, player):
    canvas = make_canvas(cooldown=300)
    place(canvas, player)
    Cooldown.objects.update(next_at=timezone.now() - timedelta(seconds=1))
    assert place(canvas, player, x=9).seq == 2


@pytest.mark.parametrize(
    "x, y, color, code",
    [
        (-1, 0, 1, "out_of_bounds"),
        (32, 0, 1, "out_of_bounds"),
        (0, 16, 1, "out_of_bounds"),
        (0, 0, 16, "invalid_color"),
        (0, 0, -1, "invalid_color"),
    ],
)
def test_invalid_placements_change_nothing(make_canvas, player, x, y, color, code):
    canvas = make_canvas(width=32, height=16)
    with pytest.raises(exc.PlaceError) as error:
        place(canvas, player, x=x, y=y, color=color)
    assert error.value.code == code
    assert Placement.objects.count() == 0
    assert not Cooldown.objects.filter(next_at__gt=timezone.now()).exists()


def test_banned_player_is_refused(make_canvas, player):
    canvas = make_canvas()
    player.banned_until = timezone.now() + timedelta(hours=1)
    player.save()
    with pytest.raises(exc.PlaceError) as error:
        place(canvas, player)
    assert error.value.code == "banned"


def test_closed_canvas_refuses_placements(make_canvas, player):
    canvas = make_canvas()
    Canvas.objects.filter(pk=canvas.pk).update(is_open=False)
    with pytest.raises(exc.PlaceError) as error:
        place(canvas, player)
    assert error.value.code == "canvas_closed"


def test_no_player_means_login_required(make_canvas):
    canvas = make_canvas()
    with pytest.raises(exc.PlaceError) as error:
        place(canvas, None)
    assert error.value.code == "login_required"


@pytest.mark.django_db(transaction=True)
def test_eight_racing_placements_by_one_player_give_exactly_one(make_canvas):
    """Real threads, real connections: the conditional UPDATE admits one."""
    canvas = make_canvas(cooldown=300)
    player = Player.objects.create(name="racer")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            place(canvas, player, x=i, y=0, color=3)
            outcome = "accepted"
        except exc.PlaceError as error:
            outcome = error.code
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["accepted"] + ["cooldown"] * 7
    assert Placement.objects.count() == 1
    assert Canvas.objects.get(pk=canvas.pk).seq == 1


def test_seqs_are_consecutive_across_players(make_canvas):
    canvas = make_canvas(cooldown=300)
    seqs = [
        place(canvas, Player.objects.create(name=f"p{i}"), x=i).seq for i in range(5)
    ]
    assert seqs == [1, 2, 3, 4, 5]


def test_create_canvas_makes_a_white_board_with_the_2017_palette(db):
    canvas, created = services.canvas_create_or_update(slug="new", width=100, height=70)
    assert created
    assert len(canvas.palette) == 16 and canvas.palette[5] == "#e50000"
    assert canvas.cooldown_seconds == 300
    data = selectors.board_snapshot(canvas=canvas).data
    assert data == bytes(100 * 70)
    assert Chunk.objects.filter(canvas=canvas).count() == 2 * 2


def test_updating_a_canvas_changes_only_given_fields(make_canvas, player):
    canvas = make_canvas(width=32, height=16, cooldown=0)
    place(canvas, player, x=31, y=15, color=9)
    place(canvas, player, x=2, y=3, color=4)
    canvas, created = services.canvas_create_or_update(
        slug=canvas.slug, width=20, cooldown_seconds=60, title="Smaller"
    )
    assert not created
    assert (canvas.width, canvas.height, canvas.cooldown_seconds, canvas.title) == (
        20,
        16,
        60,
        "Smaller",
    )
    data = selectors.board_snapshot(canvas=canvas).data
    assert len(data) == 20 * 16
    assert data[3 * 20 + 2] == 4


@pytest.mark.parametrize("field", ["width", "height"])
def test_canvas_size_must_be_sane(db, field):
    with pytest.raises(ValueError):
        services.canvas_create_or_update(slug="bad", **{field: 0})
    assert not Canvas.objects.filter(slug="bad").exists()


@pytest.mark.parametrize("cooldown", [-1, services.MAX_COOLDOWN + 1, 10**14])
def test_canvas_cooldown_must_be_sane(db, cooldown):
    with pytest.raises(ValueError, match="cooldown must be between 0 and"):
        services.canvas_create_or_update(slug="bad", cooldown_seconds=cooldown)
    assert not Canvas.objects.filter(slug="bad").exists()


def test_anonymous_session_players_get_a_generated_name(db, settings):
    from django.contrib.auth.models import AnonymousUser

    from .conftest import session_key_create

    settings.PLACE_REQUIRE_LOGIN = False
    key = session_key_create(seen=True)
    player = services.player_identify(user=AnonymousUser(), session_key=key)
    assert player.name.startswith("anon-") and len(player.name) == 11
    assert services.player_identify(user=AnonymousUser(), session_key=key) == player
    # A cookie naming no stored session mints no player.
    assert services.player_identify(user=AnonymousUser(), session_key="x" * 32) is None
    settings.PLACE_REQUIRE_LOGIN = True
    assert services.player_identify(user=AnonymousUser(), session_key=key) is None


def test_heartbeat_refreshes_only_the_sockets_the_process_holds(make_canvas):
    """A row whose socket the process lost (its task killed) goes stale and is
    swept, instead of being kept alive for as long as the process runs."""
    canvas = make_canvas()
    for name in ["held", "lost"]:
        Connection.objects.create(channel_name=name, canvas=canvas, server="host:1")
    Connection.objects.create(channel_name="other", canvas=canvas, server="host:2")
    Connection.objects.update(last_seen=timezone.now() - timedelta(seconds=60))
    services.connections_heartbeat(server="host:1", channel_names=["held", "other"])
    assert services.connections_sweep(stale_seconds=40) == 2
    assert list(Connection.objects.values_list("channel_name", flat=True)) == ["held"]


def test_heartbeat_writes_again_the_rows_of_open_sockets_swept_meanwhile(
    make_canvas,
):
    """A database outage longer than the stale time: another process swept this
    one's rows while its sockets stayed open. The next beat puts them back."""
    canvas = make_canvas()
    player = Player.objects.create(name="still-here")
    Connection.objects.create(channel_name="kept", canvas=canvas, server="host:1")
    rows = {
        "kept": (canvas.pk, None, "10.0.0.1"),
        "swept": (canvas.pk, player.pk, "10.0.0.2"),
    }
    restored = services.connections_heartbeat(
        server="host:1", channel_names=["kept", "swept", "admitting"], rows=rows
    )
    assert restored == 1  # "admitting" has no row yet: its admission writes it
    swept = Connection.objects.get(channel_name="swept")
    assert (swept.canvas_id, swept.player_id, swept.ip, swept.server) == (
        canvas.pk,
        player.pk,
        "10.0.0.2",
        "host:1",
    )
    assert (
        services.connections_heartbeat(
            server="host:1", channel_names=["kept", "swept"], rows=rows
        )
        == 0
    )


def test_heartbeat_refreshes_more_sockets_than_one_statement_binds(make_canvas):
    canvas = make_canvas()
    names = [f"socket-{i}" for i in range(services.NAMES_PER_STATEMENT * 2 + 1)]
    Connection.objects.bulk_create(
        Connection(channel_name=n, canvas=canvas, server="host:1") for n in names
    )
    Connection.objects.update(last_seen=timezone.now() - timedelta(seconds=60))
    services.connections_heartbeat(server="host:1", channel_names=names)
    assert services.connections_sweep(stale_seconds=40) == 0


def test_a_generated_name_already_taken_is_generated_again(db, settings):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    from .conftest import session_key_create

    settings.PLACE_REQUIRE_LOGIN = False
    key = session_key_create(seen=True)
    taken = services.anonymous_name(key)
    get_user_model().objects.create_user(username=taken)
    Player.objects.create(name=services.anonymous_name(key, 1))
    player = services.player_identify(user=AnonymousUser(), session_key=key)
    assert player.name.startswith("anon-") and len(player.name) == 11
    assert player.name not in {taken, services.anonymous_name(key, 1)}
    assert Player.objects.filter(name=player.name).count() == 1


def test_a_single_placement_is_checked_again_after_a_resize():
    """The per-placement path retries like the group commit (test_ingest.py
    races a real resize): CanvasResized once, then the second run's answer."""
    calls = []

    @services.checked_again_if_resized
    def attempt():
        calls.append(1)
        if len(calls) == 1:
            raise exc.CanvasResized
        return "checked again"

    assert attempt() == "checked again" and len(calls) == 2
    assert getattr(services.placement_create, "__wrapped__", None) is not None


@pytest.mark.django_db
def test_history_rows_past_one_statement_all_land_with_their_values(make_canvas):
    """placements_insert writes many rows per statement (SQLite: 111 at most);
    300 take several, and every row keeps its own values and the shared ones."""
    canvas = make_canvas(slug="history-rows", width=300, height=10)
    player = Player.objects.create(name="writer")
    now = timezone.now()
    proto = Placement(canvas_id=canvas.pk, placed_at=now, seq=0, x=0, y=0, color=0)
    proto.previous_color = 0
    rows = [(i + 1, i, i % 10, i % 16, (i + 1) % 16, player.pk) for i in range(300)]
    services.placements_insert(
        proto=proto,
        varying=("seq", "x", "y", "color", "previous_color", "player_id"),
        rows=rows,
    )
    stored = list(
        Placement.objects.filter(canvas=canvas)
        .order_by("seq")
        .values_list("seq", "x", "y", "color", "previous_color", "player_id")
    )
    assert stored == rows
    assert set(Placement.objects.values_list("placed_at", flat=True)) == {now}
