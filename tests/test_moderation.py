"""Moderation services: rollback semantics, preview, undo, bans, pause, cooldown."""

from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas import broadcast, moderation, moderation_selectors, selectors, services
from canvas import exceptions as exc
from canvas.models import Canvas, Cooldown, ModerationAction, Placement, Player
from canvas.moderation import Scope


@pytest.fixture
def stream(monkeypatch):
    """Every update published, in order, as the hubs would receive them."""
    sent: list[tuple[int, int, int, int]] = []

    def publish(*, canvas_id, updates):
        sent.extend(tuple(u) for u in updates)

    monkeypatch.setattr(broadcast, "publish", publish)
    return sent


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """Call a service and run its on-commit broadcasts, as a real commit would."""

    def call(function, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(**kwargs)

    return call


@pytest.fixture
def players(db):
    return [Player.objects.create(name=name) for name in ("alice", "bob", "carol")]


def place(run, canvas, player, x, y, color) -> Placement:
    result = run(
        services.placement_create,
        canvas_id=canvas.pk,
        player_id=player.pk,
        x=x,
        y=y,
        color=color,
    )
    return Placement.objects.get(canvas=canvas, seq=result.seq)


def pixel(canvas, x, y) -> int:
    canvas.refresh_from_db()
    return selectors.board_assemble(canvas)[y * canvas.width + x]


def rollback(run, canvas, scope, reason="griefing"):
    return run(
        moderation.placements_rollback, canvas_id=canvas.pk, scope=scope, reason=reason
    )


def undo(run, action, reason="mistake"):
    return run(moderation.rollback_undo, action_id=action.pk, reason=reason)


def test_rollback_restores_what_the_pixel_showed_before(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, bob, 1, 1, 3)
    place(run, canvas, alice, 1, 1, 5)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    assert pixel(canvas, 1, 1) == 3
    assert (action.placements_count, action.pixels_count) == (1, 1)


def test_rollback_keeps_later_work_by_others(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, alice, 1, 1, 5)
    place(run, canvas, bob, 1, 1, 9)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    assert pixel(canvas, 1, 1) == 9
    assert (action.placements_count, action.pixels_count) == (1, 0)
    assert Placement.objects.get(player=alice).rolled_back


def test_stacked_rollbacks_show_newest_surviving_placement(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, carol = players
    place(run, canvas, bob, 2, 2, 3)
    place(run, canvas, alice, 2, 2, 5)
    place(run, canvas, carol, 2, 2, 6)
    place(run, canvas, alice, 2, 2, 7)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk, carol.pk)))
    assert pixel(canvas, 2, 2) == 3
    assert (action.placements_count, action.pixels_count) == (3, 1)


def test_rollback_of_only_placement_shows_background(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    place(run, canvas, players[0], 0, 0, 5)
    rollback(run, canvas, Scope(region=(0, 0, 0, 0)))
    assert pixel(canvas, 0, 0) == 0


def test_rollback_after_a_shrink_changes_no_pixel_outside_the_canvas(
    make_canvas, players, run, stream
):
    canvas = make_canvas(width=32, height=16, cooldown=0)
    place(run, canvas, players[1], 30, 10, 3)
    place(run, canvas, players[0], 30, 10, 5)
    place(run, canvas, players[0], 2, 2, 5)
    services.canvas_create_or_update(slug=canvas.slug, width=20, height=16)
    canvas.refresh_from_db()
    seq_before, sent_before = canvas.seq, len(stream)
    action = rollback(run, canvas, Scope(player_ids=(players[0].pk,)))
    # Both of alice's placements are marked; only the pixel still on the canvas
    # changes, and no update names a pixel outside it.
    assert (action.placements_count, action.pixels_count) == (2, 1)
    canvas.refresh_from_db()
    assert canvas.seq == seq_before + 1
    assert [u[1:] for u in stream[sent_before:]] == [(2, 2, 0)]
    assert pixel(canvas, 2, 2) == 0


def test_rollback_after_shrink_and_grow_does_not_bring_back_wiped_pixels(
    make_canvas, players, run
):
    canvas = make_canvas(width=32, height=16, cooldown=0)
    alice, bob, _ = players
    place(run, canvas, bob, 30, 10, 3)
    place(run, canvas, alice, 30, 10, 5)
    services.canvas_create_or_update(slug=canvas.slug, width=20)
    services.canvas_create_or_update(slug=canvas.slug, width=32)
    assert pixel(canvas, 30, 10) == 0
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    # Bob's pixel was wiped by the shrink: it stays blank, as the pixel
    # inspector says.
    assert pixel(canvas, 30, 10) == 0
    assert (action.placements_count, action.pixels_count) == (1, 0)
    canvas.refresh_from_db()
    info = selectors.pixel_info(canvas=canvas, x=30, y=10)
    assert (info.color, info.placed_by) == (0, None)


def test_each_changed_pixel_gets_a_moderation_seq_and_is_broadcast(
    make_canvas, players, run, stream
):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    for x in range(3):
        place(run, canvas, alice, x, 0, 5)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    rows = Placement.objects.filter(kind=Placement.KIND_MODERATION).order_by("seq")
    assert [(r.seq, r.x, r.color, r.previous_color, r.player) for r in rows] == [
        (4, 0, 0, 5, None),
        (5, 1, 0, 5, None),
        (6, 2, 0, 5, None),
    ]
    assert (action.seq_from, action.seq_to) == (4, 6)
    assert stream[3:] == [(4, 0, 0, 0), (5, 1, 0, 0), (6, 2, 0, 0)]
    assert selectors.board_snapshot(canvas=canvas).seq == 6


def test_region_scope_is_inclusive_and_respects_since(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    old = place(run, canvas, alice, 1, 1, 4)
    Placement.objects.filter(pk=old.pk).update(
        placed_at=timezone.now() - timedelta(hours=2)
    )
    for x, y in [(1, 1), (3, 2), (4, 2)]:
        place(run, canvas, alice, x, y, 5)
    since = timezone.now() - timedelta(hours=1)
    action = rollback(run, canvas, Scope(region=(1, 1, 3, 2), since=since))
    assert (action.placements_count, action.pixels_count) == (2, 2)
    assert [pixel(canvas, 1, 1), pixel(canvas, 3, 2), pixel(canvas, 4, 2)] == [4, 0, 5]


def test_region_scope_can_be_limited_to_some_players(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, alice, 0, 0, 5)
    place(run, canvas, bob, 1, 0, 6)
    rollback(run, canvas, Scope(region=(0, 0, 5, 5), player_ids=(bob.pk,)))
    assert [pixel(canvas, 0, 0), pixel(canvas, 1, 0)] == [5, 0]


def test_rolling_back_twice_counts_nothing_the_second_time(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    place(run, canvas, players[0], 0, 0, 5)
    rollback(run, canvas, Scope(player_ids=(players[0].pk,)))
    again = rollback(run, canvas, Scope(player_ids=(players[0].pk,)))
    assert (again.placements_count, again.pixels_count) == (0, 0)
    # Nothing was left to mark, so nothing is recorded to hold the scope.
    assert again.pk is None and ModerationAction.objects.count() == 1


def test_a_ban_after_a_rollback_records_no_empty_rollback(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    place(run, canvas, alice, 1, 1, 5)
    first = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    ban = run(
        moderation.player_ban, player_id=alice.pk, reason="spam", rollback_hours=1
    )
    assert ban.rollbacks == []
    undo(run, first)
    assert pixel(canvas, 1, 1) == 5  # not held by a rollback that marked nothing


def test_until_keeps_the_whole_second_it_names(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    made = place(run, canvas, players[0], 1, 1, 5)
    second = made.placed_at.replace(microsecond=0)
    Placement.objects.filter(pk=made.pk).update(
        placed_at=second.replace(microsecond=960000)
    )
    in_scope = Placement.objects.filter(
        Scope(until=second).q(canvas_id=canvas.pk, upto_seq=9)
    )
    assert list(in_scope) == [made]
    exact = second.replace(microsecond=500000)
    assert not Placement.objects.filter(
        Scope(until=exact).q(canvas_id=canvas.pk, upto_seq=9)
    ).exists()


def test_undo_restores_the_rolled_back_pixels(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, bob, 1, 1, 3)
    place(run, canvas, alice, 1, 1, 5)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    reverted = undo(run, action)
    assert pixel(canvas, 1, 1) == 5
    assert (reverted.placements_count, reverted.pixels_count) == (1, 1)
    assert reverted.undo_of == action
    assert ModerationAction.objects.get(pk=action.pk).is_undone
    assert not Placement.objects.filter(rolled_back=True).exists()


def test_undo_keeps_work_placed_after_the_rollback(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, alice, 1, 1, 5)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    place(run, canvas, bob, 1, 1, 9)
    reverted = undo(run, action)
    assert pixel(canvas, 1, 1) == 9
    assert (reverted.placements_count, reverted.pixels_count) == (1, 0)


def test_undo_leaves_placements_another_rollback_covers(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    place(run, canvas, alice, 1, 1, 5)
    first = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    place(run, canvas, players[1], 2, 2, 7)  # so the region has work of its own
    second = rollback(run, canvas, Scope(region=(0, 0, 3, 3)))
    undo(run, first)
    assert pixel(canvas, 1, 1) == 0
    assert Placement.objects.get(player=alice).rolled_back_by_id == second.pk
    undo(run, second)
    assert pixel(canvas, 1, 1) == 5


def test_undo_twice_or_of_a_ban_is_refused(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    place(run, canvas, players[0], 0, 0, 5)
    action = rollback(run, canvas, Scope(player_ids=(players[0].pk,)))
    undo(run, action)
    with pytest.raises(moderation.ModerationError, match="already been undone"):
        undo(run, action)
    ban = moderation.player_ban(player_id=players[1].pk, reason="spam")
    with pytest.raises(moderation.ModerationError, match="Only a rollback"):
        undo(run, ban)


def test_preview_matches_the_rollback_and_writes_nothing(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, bob, 1, 1, 3)
    place(run, canvas, alice, 1, 1, 5)
    place(run, canvas, alice, 4, 2, 5)
    place(run, canvas, bob, 4, 2, 8)
    canvas.refresh_from_db()
    preview = moderation.rollback_preview(
        canvas=canvas, scope=Scope(player_ids=(alice.pk,))
    )
    assert (preview.placements, preview.pixels) == (2, 1)
    assert preview.changes == [(1, 1, 3)]
    assert preview.bounds == (1, 1, 1, 1)
    assert not Placement.objects.filter(rolled_back=True).exists()
    assert Canvas.objects.get(pk=canvas.pk).seq == 4
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    assert (action.placements_count, action.pixels_count) == (2, 1)


def test_preview_looks_up_each_pixel_once_however_many_placements_hit_it(
    make_canvas, players, run
):
    """The newest surviving colour is looked up per distinct pixel, not per
    placement: DISTINCT runs in a subquery the lookup reads from."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, bob, 1, 1, 3)
    for color in (5, 6, 7):
        place(run, canvas, alice, 1, 1, color)
    canvas.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        preview = moderation.rollback_preview(
            canvas=canvas, scope=Scope(player_ids=(alice.pk,))
        )
    assert preview.changes == [(1, 1, 3)]
    (plan,) = [q["sql"] for q in queries if "COALESCE" in q["sql"]]
    assert plan.index("COALESCE") < plan.index("SELECT DISTINCT")


BAD_REGION_32X16 = (
    "The region must lie inside the canvas, with x0 <= x1 and y0 <= y1:"
    " x must be 0–31 and y 0–15 on canvas test (32×16)."
)


@pytest.mark.parametrize(
    "scope, message",
    [
        (Scope(), moderation.MSG_EMPTY_SCOPE),
        (Scope(region=(0, 0, 32, 1)), BAD_REGION_32X16),
        (Scope(region=(0, 0, 1, 16)), BAD_REGION_32X16),
        (Scope(region=(3, 0, 2, 1)), BAD_REGION_32X16),
        (Scope(region=(-1, 0, 2, 1)), BAD_REGION_32X16),
    ],
)
def test_bad_scopes_are_refused(make_canvas, run, scope, message):
    canvas = make_canvas(width=32, height=16)
    with pytest.raises(moderation.ModerationError) as error:
        rollback(run, canvas, scope)
    assert str(error.value) == message
    with pytest.raises(moderation.ModerationError) as error:
        moderation.rollback_preview(canvas=canvas, scope=scope)
    assert str(error.value) == message
    assert not ModerationAction.objects.exists()


def test_the_region_error_names_the_bounds_of_its_own_canvas(make_canvas):
    """Not "inside the canvas" alone: the moderator should not need to look
    up how big this canvas is."""
    main = make_canvas(slug="big", width=1000, height=1000)
    with pytest.raises(moderation.ModerationError) as error:
        moderation.region_check(canvas=main, region=(0, 0, 1000, 999))
    assert "x must be 0–999 and y 0–999 on canvas big (1000×1000)." in str(error.value)
    moderation.region_check(canvas=main, region=(0, 0, 999, 999))  # all of it


def test_a_reason_is_required(make_canvas, run):
    canvas = make_canvas()
    with pytest.raises(moderation.ModerationError) as error:
        rollback(run, canvas, Scope(region=(0, 0, 1, 1)), reason=" ")
    assert str(error.value) == moderation.MSG_REASON_REQUIRED


def test_a_reason_longer_than_the_audit_row_keeps_is_refused(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    place(run, canvas, alice, 0, 0, 5)
    too_long = "r" * (moderation.MAX_REASON + 1)
    calls = [
        (
            moderation.placements_rollback,
            {"canvas_id": canvas.pk, "scope": Scope(region=(0, 0, 1, 1))},
        ),
        (moderation.player_ban, {"player_id": alice.pk}),
        (moderation.canvas_set_open, {"canvas_id": canvas.pk, "is_open": False}),
    ]
    for function, kwargs in calls:
        with pytest.raises(moderation.ModerationError) as error:
            run(function, reason=too_long, **kwargs)
        assert str(error.value) == moderation.MSG_REASON_TOO_LONG
    assert not ModerationAction.objects.exists()
    assert not Placement.objects.filter(rolled_back=True).exists()
    alice.refresh_from_db()
    assert alice.banned_until is None
    action = rollback(run, canvas, Scope(region=(0, 0, 1, 1)), reason=too_long[1:])
    assert action.reason == too_long[1:]


def test_rollback_in_many_batches_equals_one_batch(
    make_canvas, players, run, monkeypatch
):
    monkeypatch.setattr(moderation, "BATCH_PLACEMENTS", 1)
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    for y in range(5):
        place(run, canvas, bob, 0, y, 2)
        place(run, canvas, alice, 0, y, 5)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    assert (action.placements_count, action.pixels_count) == (5, 5)
    assert all(pixel(canvas, 0, y) == 2 for y in range(5))
    assert (action.seq_from, action.seq_to) == (11, 15)


def test_placement_made_while_a_batch_plans_is_kept(
    make_canvas, players, run, monkeypatch
):
    """A pixel placed on after a batch read its plan, before it locked the
    canvas, is read again under the lock: the newer placement stays."""
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, alice, 1, 1, 5)
    place(run, canvas, alice, 2, 1, 6)
    shown = moderation._pixels_shown
    calls = []

    def racing(**kwargs):
        result = shown(**kwargs)
        if not calls:
            services.placement_create(
                canvas_id=canvas.pk, player_id=bob.pk, x=1, y=1, color=9
            )
        calls.append(kwargs["pixels"])
        return result

    monkeypatch.setattr(moderation, "_pixels_shown", racing)
    action = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    assert calls == [[(1, 1), (2, 1)], [(1, 1)]]
    assert [pixel(canvas, 1, 1), pixel(canvas, 2, 1)] == [9, 0]
    assert (action.placements_count, action.pixels_count) == (2, 1)


def test_ban_refuses_placements_and_rolls_back_recent_hours(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    old = place(run, canvas, alice, 0, 0, 4)
    Placement.objects.filter(pk=old.pk).update(
        placed_at=timezone.now() - timedelta(hours=5)
    )
    place(run, canvas, alice, 1, 0, 5)
    ban = run(
        moderation.player_ban, player_id=alice.pk, reason="grief", rollback_hours=2
    )
    assert ban.kind == ModerationAction.KIND_BAN
    assert [pixel(canvas, 0, 0), pixel(canvas, 1, 0)] == [4, 0]
    with pytest.raises(exc.PlaceError) as error:
        place(run, canvas, alice, 2, 0, 5)
    assert error.value.code == "banned"
    rollback_action = ModerationAction.objects.get(kind=ModerationAction.KIND_ROLLBACK)
    assert rollback_action.player == alice
    moderation.player_unban(player_id=alice.pk, reason="appeal")
    assert place(run, canvas, alice, 2, 0, 5).color == 5


def test_temporary_ban_ends(make_canvas, players):
    moderation.player_ban(
        player_id=players[0].pk, reason="cool off", duration=timedelta(hours=1)
    )
    player = Player.objects.get(pk=players[0].pk)
    assert player.is_banned()
    assert not player.is_banned(now=timezone.now() + timedelta(hours=2))
    assert player.ban_reason == "cool off"


def test_pause_refuses_placements_and_tells_every_process(
    make_canvas, players, run, monkeypatch
):
    canvas = make_canvas(cooldown=0)
    told = []
    monkeypatch.setattr(broadcast, "_send_now_or_later", lambda c, m: told.append(c))
    run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=False, reason="x")
    with pytest.raises(exc.PlaceError) as error:
        place(run, canvas, players[0], 0, 0, 5)
    assert error.value.code == "canvas_closed"
    run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=True, reason="x")
    assert place(run, canvas, players[0], 0, 0, 5).color == 5
    assert told == [canvas.pk, canvas.pk]
    kinds = ModerationAction.objects.order_by("pk").values_list("kind", flat=True)
    assert list(kinds) == ["pause", "resume"]


def test_pausing_a_paused_canvas_is_refused_and_not_recorded(
    make_canvas, run, monkeypatch
):
    canvas = make_canvas(cooldown=0)
    told = []
    monkeypatch.setattr(broadcast, "_send_now_or_later", lambda c, m: told.append(c))
    run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=False, reason="x")
    with pytest.raises(moderation.ModerationError, match="already paused"):
        run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=False, reason="y")
    run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=True, reason="z")
    with pytest.raises(moderation.ModerationError, match="already open"):
        run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=True, reason="w")
    assert Canvas.objects.get(pk=canvas.pk).is_open
    kinds = ModerationAction.objects.order_by("pk").values_list("kind", flat=True)
    assert list(kinds) == ["pause", "resume"]
    assert told == [canvas.pk, canvas.pk]


def test_shorter_cooldown_shortens_running_cooldowns(make_canvas, players, run):
    canvas = make_canvas(cooldown=300)
    place(run, canvas, players[0], 0, 0, 5)
    action = run(
        moderation.canvas_set_cooldown,
        canvas_id=canvas.pk,
        cooldown_seconds=10,
        reason="event",
    )
    assert Canvas.objects.get(pk=canvas.pk).cooldown_seconds == 10
    next_at = Cooldown.objects.get(player=players[0]).next_at
    assert next_at <= timezone.now() + timedelta(seconds=10)
    assert action.scope == {"from": 300, "to": 10}


def test_region_at_seq_shows_the_board_of_that_moment(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    place(run, canvas, alice, 0, 0, 5)
    place(run, canvas, alice, 1, 0, 6)
    place(run, canvas, alice, 0, 0, 7)
    rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    region = (0, 0, 2, 0)
    shown = [
        moderation_selectors.region_at_seq(canvas=canvas, region=region, seq=seq)
        for seq in range(6)
    ]
    assert shown == [
        bytes([0, 0, 0]),
        bytes([5, 0, 0]),
        bytes([5, 6, 0]),
        bytes([7, 6, 0]),
        bytes([0, 6, 0]),
        bytes([0, 0, 0]),
    ]


# The property: a model of the documented semantics, checked after every step.


def expected_board(width, height, placements, rolled_back):
    board = bytearray(width * height)
    for p in sorted(placements, key=lambda p: p["seq"]):
        if p["id"] not in rolled_back:
            board[p["y"] * width + p["x"]] = p["color"]
    return bytes(board)


def scope_strategy(draw, *, ids, player_pks, times, width, height):
    kind = draw(st.sampled_from(["selected", "players", "region"]))
    if kind == "selected":
        return Scope(placement_ids=tuple(draw(st.sets(st.sampled_from(ids)))) or (-1,))
    window = draw(st.lists(st.sampled_from(times), max_size=2).map(sorted))
    since = window[0] if window else None
    until = window[1] if len(window) == 2 else None
    chosen = tuple(draw(st.sets(st.sampled_from(player_pks), min_size=1)))
    if kind == "players":
        return Scope(player_ids=chosen, since=since, until=until)
    xs = sorted(draw(st.tuples(*[st.integers(0, width - 1)] * 2)))
    ys = sorted(draw(st.tuples(*[st.integers(0, height - 1)] * 2)))
    return Scope(
        region=(xs[0], ys[0], xs[1], ys[1]),
        since=since,
        player_ids=chosen if draw(st.booleans()) else (),
    )


def in_scope(p, scope, upto):
    region = scope.region or (0, 0, 10**6, 10**6)
    return (
        p["seq"] <= upto
        and (not scope.placement_ids or p["id"] in scope.placement_ids)
        and (not scope.player_ids or p["player"] in scope.player_ids)
        and (scope.since is None or p["at"] >= scope.since)
        and (scope.until is None or p["at"] <= scope.until)
        and region[0] <= p["x"] <= region[2]
        and region[1] <= p["y"] <= region[3]
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_board_always_equals_replay_and_stream(
    make_canvas, players, run, stream, monkeypatch, data
):
    width, height = 4, 3
    stream.clear()
    monkeypatch.setattr(
        moderation, "BATCH_PLACEMENTS", data.draw(st.sampled_from([1, 5000]))
    )
    canvas = make_canvas(
        slug=f"p{Canvas.objects.count()}", width=width, height=height, cooldown=0
    )
    player_pks = [p.pk for p in players]
    start = timezone.now() - timedelta(days=1)
    model: list[dict] = []
    actions: list[dict] = []  # {"pk", "covered": set of ids, "active": bool}

    def rolled_back() -> set[int]:
        return set().union(*[a["covered"] for a in actions if a["active"]] or [set()])

    for _ in range(data.draw(st.integers(1, 25))):
        before = expected_board(width, height, model, rolled_back())
        choice = data.draw(st.sampled_from(["place"] * 3 + ["rollback", "undo"]))
        if choice == "place" or not model:
            x, y = (
                data.draw(st.integers(0, width - 1)),
                data.draw(st.integers(0, height - 1)),
            )
            player = data.draw(st.sampled_from(players))
            color = data.draw(st.integers(0, 15))
            row = place(run, canvas, player, x, y, color)
            at = start + timedelta(minutes=row.seq)
            Placement.objects.filter(pk=row.pk).update(placed_at=at)
            model.append(
                {"id": row.pk, "seq": row.seq, "player": player.pk, "x": x, "y": y}
                | {"color": color, "at": at}
            )
        elif choice == "rollback":
            scope = scope_strategy(
                data.draw,
                ids=[p["id"] for p in model],
                player_pks=player_pks,
                times=[p["at"] for p in model],
                width=width,
                height=height,
            )
            upto = Canvas.objects.get(pk=canvas.pk).seq
            covered = {p["id"] for p in model if in_scope(p, scope, upto)}
            newly = len(covered - rolled_back())
            action = rollback(run, canvas, scope)
            if newly:
                actions.append({"pk": action.pk, "covered": covered, "active": True})
            else:  # nothing left to mark: nothing recorded, nothing held
                assert action.pk is None
            after = expected_board(width, height, model, rolled_back())
            changed = sum(a != b for a, b in zip(before, after, strict=True))
            assert (action.placements_count, action.pixels_count) == (newly, changed)
        else:
            active = [a for a in actions if a["active"]]
            if not active:
                continue
            target = data.draw(st.sampled_from(active))
            was = rolled_back()
            target["active"] = False
            reverted = undo(run, ModerationAction.objects.get(pk=target["pk"]))
            after = expected_board(width, height, model, rolled_back())
            changed = sum(a != b for a, b in zip(before, after, strict=True))
            released = len(was - rolled_back())
            assert (reverted.placements_count, reverted.pixels_count) == (
                released,
                changed,
            )

        canvas.refresh_from_db()
        board = selectors.board_assemble(canvas)
        assert board == expected_board(width, height, model, rolled_back())
        flagged = Placement.objects.filter(canvas=canvas, rolled_back=True)
        assert set(flagged.values_list("pk", flat=True)) == rolled_back()
        replayed = bytearray(width * height)
        for _seq, x, y, color in stream:
            replayed[y * width + x] = color
        assert bytes(replayed) == board
        assert [u[0] for u in stream] == list(range(1, canvas.seq + 1))


def test_absurd_values_are_refused_before_anything_is_written(make_canvas, players):
    canvas, alice = make_canvas(cooldown=0), players[0]
    with pytest.raises(moderation.ModerationError, match="Hours must be"):
        moderation.player_ban(player_id=alice.pk, reason="x", rollback_hours=1e12)
    with pytest.raises(moderation.ModerationError, match="Hours must be"):
        moderation.player_ban(
            player_id=alice.pk, reason="x", duration=timedelta(days=10**6)
        )
    with pytest.raises(moderation.ModerationError, match=moderation.MSG_BAD_COOLDOWN):
        moderation.canvas_set_cooldown(
            canvas_id=canvas.pk, cooldown_seconds=10**12, reason="x"
        )
    alice.refresh_from_db()
    assert not alice.is_banned() and not ModerationAction.objects.exists()


def test_since_later_than_until_is_refused(make_canvas, run):
    canvas = make_canvas()
    now = timezone.now()
    scope = Scope(since=now, until=now - timedelta(seconds=1))
    with pytest.raises(moderation.ModerationError) as error:
        rollback(run, canvas, scope)
    assert str(error.value) == moderation.MSG_BAD_WINDOW
    with pytest.raises(moderation.ModerationError):
        moderation.rollback_preview(canvas=canvas, scope=scope)
    assert not ModerationAction.objects.exists()


def test_a_pinned_rollback_leaves_later_placements_alone(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    place(run, canvas, alice, 1, 1, 5)
    canvas.refresh_from_db()
    scope = Scope(region=(0, 0, 3, 3))
    preview = moderation.rollback_preview(canvas=canvas, scope=scope)
    place(run, canvas, bob, 2, 2, 9)
    action = run(
        moderation.placements_rollback,
        canvas_id=canvas.pk,
        scope=scope,
        reason="grief",
        upto_seq=preview.upto_seq,
    )
    assert (action.placements_count, action.pixels_count) == (1, 1)
    assert [pixel(canvas, 1, 1), pixel(canvas, 2, 2)] == [0, 9]


def test_still_covered_names_every_rollback_in_force(make_canvas, players, run):
    canvas = make_canvas(cooldown=0)
    alice, bob, _ = players
    mine = place(run, canvas, alice, 1, 1, 5)
    first = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    place(run, canvas, bob, 2, 2, 7)
    second = rollback(run, canvas, Scope(region=(0, 0, 3, 3)))
    place(run, canvas, bob, 3, 3, 7)
    last = place(run, canvas, bob, 4, 4, 7)
    third = rollback(run, canvas, Scope(placement_ids=(mine.pk, last.pk)))
    undo(run, first)
    assert moderation.still_covered(action=first) == {second.pk: 1, third.pk: 1}


def test_an_empty_rollback_left_from_before_does_not_hold_placements(
    make_canvas, players, run
):
    """Rows recorded before empty rollbacks were refused must not keep an
    undo from restoring."""
    canvas = make_canvas(cooldown=0)
    alice = players[0]
    place(run, canvas, alice, 1, 1, 5)
    real = rollback(run, canvas, Scope(player_ids=(alice.pk,)))
    ModerationAction.objects.create(
        kind=ModerationAction.KIND_ROLLBACK,
        canvas=canvas,
        reason="twin",
        scope={**real.scope},
    )
    restored = undo(run, real)
    assert restored.placements_count == 1
    assert pixel(canvas, 1, 1) == 5
    assert moderation.still_covered(action=real) == {}


def test_every_recorded_action_is_one_structured_log_line(
    make_canvas, players, run, stream
):
    """Operators see moderation beside placements on stderr (docs/deploy.md)."""
    import logging

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("canvas.moderation").addHandler(handler)
    try:
        canvas = make_canvas(slug="logged", width=8, height=8, cooldown=0)
        alice, bob, _ = players
        place(run, canvas, alice, 1, 1, 5)
        place(run, canvas, alice, 2, 1, 5)
        rollback = run(
            moderation.placements_rollback,
            canvas_id=canvas.pk,
            scope=Scope(player_ids=(alice.pk,)),
            reason='griefing "art"',
        )
        run(moderation.rollback_undo, action_id=rollback.pk, reason="mistake")
        run(moderation.player_ban, player_id=bob.pk, reason="spam")
        run(moderation.canvas_set_open, canvas_id=canvas.pk, is_open=False, reason="x")
        # Nothing to roll back: nothing recorded, nothing logged.
        run(
            moderation.placements_rollback,
            canvas_id=canvas.pk,
            scope=Scope(player_ids=(bob.pk,)),
            reason="none",
        )
    finally:
        logging.getLogger("canvas.moderation").removeHandler(handler)
    assert [line.split()[2] for line in lines] == [
        "kind=rollback",
        "kind=undo",
        "kind=ban",
        "kind=pause",
    ]
    assert lines[0].startswith(f"event=moderation action={rollback.pk} ")
    assert f"canvas={canvas.pk} player={alice.pk} moderator=None" in lines[0]
    assert "placements=2 pixels=2" in lines[0]
    assert lines[0].endswith('reason="griefing \\"art\\""')
    assert f"player={bob.pk}" in lines[2]


def test_no_op_unbans_and_cooldown_changes_are_refused_and_not_recorded(
    make_canvas, players
):
    """The audit trail holds what changed: lifting no ban, or setting the
    cooldown it has, is refused with a message and records nothing."""
    canvas = make_canvas(slug="no-ops", width=8, height=8, cooldown=30)
    alice = players[0]
    with pytest.raises(moderation.ModerationError, match="not banned"):
        moderation.player_unban(player_id=alice.pk, reason="appeal")
    moderation.player_ban(
        player_id=alice.pk, reason="cool off", duration=timedelta(hours=1)
    )
    Player.objects.filter(pk=alice.pk).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )  # the ban has run out
    with pytest.raises(moderation.ModerationError, match="not banned"):
        moderation.player_unban(player_id=alice.pk, reason="appeal")
    with pytest.raises(moderation.ModerationError, match="cooldown is that already"):
        moderation.canvas_set_cooldown(
            canvas_id=canvas.pk, cooldown_seconds=30, reason="same"
        )
    kinds = list(ModerationAction.objects.values_list("kind", flat=True))
    assert kinds == [ModerationAction.KIND_BAN]
    action = moderation.canvas_set_cooldown(
        canvas_id=canvas.pk, cooldown_seconds=10, reason="faster"
    )
    assert action.scope == {"from": 30, "to": 10}
