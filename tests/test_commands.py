"""Management commands: `rollback` prints exactly the contract's one line."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from canvas import services
from canvas.models import ModerationAction, Placement, Player


def rollback(*args: str) -> str:
    out = StringIO()
    call_command("rollback", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def griefed(make_canvas):
    """alice paints (0,0) and (1,0); bob then paints over (1,0)."""
    canvas = make_canvas(slug="main2", cooldown=0)
    alice = Player.objects.create(name="alice")
    bob = Player.objects.create(name="bob")
    for player, x, color in [(alice, 0, 5), (alice, 1, 5), (bob, 1, 9)]:
        services.placement_create(
            canvas_id=canvas.pk, player_id=player.pk, x=x, y=0, color=color
        )
    return canvas


def test_rollback_prints_placements_and_changed_pixels(griefed):
    assert rollback("main2", "--user", "alice") == (
        "2 placements rolled back, 1 pixels changed\n"
    )
    action = ModerationAction.objects.get()
    assert (action.reason, action.moderator) == ("manage.py rollback", None)


def test_dry_run_prints_what_would_happen_and_changes_nothing(griefed):
    assert rollback("main2", "--user", "alice", "--dry-run") == (
        "would roll back 2 placements, change 1 pixels\n"
    )
    assert not Placement.objects.filter(rolled_back=True).exists()
    assert not ModerationAction.objects.exists()


def test_region_bounds_are_inclusive(griefed):
    out = rollback("main2", "--region", "1", "0", "1", "0", "--reason", "test")
    assert out == "2 placements rolled back, 1 pixels changed\n"
    assert ModerationAction.objects.get().reason == "test"


def test_several_users_and_a_time_window(griefed):
    since = (timezone.now() - timedelta(minutes=5)).isoformat()
    until = (timezone.now() + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    out = rollback(
        "main2", "--user", "alice", "bob", "--since", since, "--until", until
    )
    assert out == "3 placements rolled back, 2 pixels changed\n"


@pytest.mark.parametrize("users", [["alice,bob"], ["alice, bob"], ["alice bob"]])
def test_users_listed_with_commas_or_spaces_in_one_argument(griefed, users):
    out = rollback("main2", "--user", *users, "--dry-run")
    assert out == "would roll back 3 placements, change 2 pixels\n"


@pytest.mark.parametrize("users", [[""], [","], ["alice", " "]])
def test_an_empty_user_is_an_error_not_every_player(griefed, users):
    with pytest.raises(CommandError, match="--user needs a player name"):
        rollback("main2", "--user", *users, "--region", "0", "0", "1", "0")
    assert not ModerationAction.objects.exists()


def test_a_reason_too_long_to_keep_is_an_error_and_changes_nothing(griefed):
    with pytest.raises(CommandError, match="Keep the reason to 500 characters"):
        rollback("main2", "--user", "alice", "--reason", "r" * 501)
    assert not ModerationAction.objects.exists()
    assert not Placement.objects.filter(rolled_back=True).exists()


def test_window_before_any_placement_rolls_back_nothing(griefed):
    out = rollback("main2", "--until", "2001-01-01T00:00:00Z")
    assert out == "0 placements rolled back, 0 pixels changed\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope", "--user", "alice"], "no canvas 'nope'"),
        (["main2", "--user", "mallory"], "no player named mallory"),
        (["main2"], "Choose placements, players, a time window or a region."),
        (["main2", "--region", "0", "0", "99", "0"], "The region must lie inside"),
    ],
)
def test_bad_arguments_are_errors(griefed, args, message):
    with pytest.raises(CommandError, match=message):
        rollback(*args)
    assert not ModerationAction.objects.exists()


def test_the_output_line_is_the_contracts_even_for_one(griefed):
    """Admin says "1 placement"; the command's line is fixed by the contract,
    which scripts parse, so it keeps "1 placements" and "1 pixels"."""
    region = ["--region", "0", "0", "0", "0"]  # alice's (0,0) alone
    assert rollback("main2", *region, "--dry-run") == (
        "would roll back 1 placements, change 1 pixels\n"
    )
    assert rollback("main2", *region) == "1 placements rolled back, 1 pixels changed\n"


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize(
    "region",
    [["0", "0", "32", "0"], ["0", "16", "0", "16"], ["1", "0", "0", "0"], ["-1"] * 4],
)
def test_a_region_outside_the_canvas_is_an_error_naming_its_bounds(
    griefed, region, dry_run
):
    with pytest.raises(CommandError) as error:
        rollback("main2", "--region", *region, *dry_run)
    assert str(error.value) == (
        "The region must lie inside the canvas, with x0 <= x1 and y0 <= y1:"
        " x must be 0–31 and y 0–15 on canvas main2 (32×16)."
    )
    assert not ModerationAction.objects.exists()
    assert not Placement.objects.filter(rolled_back=True).exists()


def createcanvas(*args: str) -> str:
    out = StringIO()
    call_command("createcanvas", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_createcanvas_creates_then_updates_only_what_it_is_given():
    assert createcanvas("fresh", "--width", "40", "--height", "30") == (
        "created canvas fresh: 40x30, cooldown 300 s\n"
    )
    assert createcanvas("fresh", "--cooldown", "0", "--title", "Fresh") == (
        "updated canvas fresh: 40x30, cooldown 0 s\n"
    )


@pytest.mark.django_db
def test_createcanvas_says_when_a_resize_drops_pixels():
    createcanvas("cut", "--width", "40", "--height", "30")
    err = StringIO()
    call_command("createcanvas", "cut", "--width", "20", stdout=StringIO(), stderr=err)
    assert "cut from 40x30; the pixels outside it are gone" in err.getvalue()
    err = StringIO()
    call_command("createcanvas", "cut", "--width", "60", stdout=StringIO(), stderr=err)
    assert err.getvalue() == ""  # growing loses nothing


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["a" * 51], "slug must be at most 50 characters"),
        (["long", "--title", "t" * 201], "title must be at most 200 characters"),
        (["bad slug"], "invalid slug"),
        (["wide", "--width", "0"], "width must be between 1 and 10000"),
        (["slow", "--cooldown", "-1"], "cooldown must be between 0"),
    ],
)
def test_createcanvas_refuses_what_the_canvas_cannot_hold(args, message):
    """A clear error, not a database's traceback (or, on SQLite, a title
    stored past its limit)."""
    from canvas.models import Canvas

    with pytest.raises(CommandError, match=message):
        createcanvas(*args)
    assert not Canvas.objects.filter(slug__in=["a" * 51, "long"]).exists()


def test_a_command_with_redis_down_does_its_work_and_says_so_in_one_line(tmp_path):
    """The servers read the change from the database anyway; an operator gets
    a warning, not a traceback that reads like a failure."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("PLACE_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    root = Path(__file__).resolve().parent.parent

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "-v0").returncode == 0
    result = manage("createcanvas", "main", "--cooldown", "0")
    assert result.returncode == 0
    assert result.stdout == "updated canvas main: 1000x1000, cooldown 0 s\n"
    assert "could not notify canvas" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_name_two_players_share_is_refused_listing_them(griefed):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="anon-88605a")
    account = Player.objects.create(name="anon-88605a", user=user)
    anonymous = Player.objects.create(name="anon-88605a", session_key="s" * 32)
    services.placement_create(
        canvas_id=griefed.pk, player_id=anonymous.pk, x=3, y=0, color=5
    )
    with pytest.raises(CommandError) as error:
        rollback("main2", "--user", "anon-88605a")
    assert f"#{account.pk} (account), #{anonymous.pk} (anonymous)" in str(error.value)
    assert not ModerationAction.objects.exists()
    out = rollback("main2", "--user", f"#{anonymous.pk}")
    assert out == "1 placements rolled back, 1 pixels changed\n"


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_since_later_than_until_is_an_error(griefed, dry_run):
    window = ["--since", "2030-01-02T00:00Z", "--until", "2030-01-01T00:00Z"]
    with pytest.raises(CommandError, match="later than"):
        rollback("main2", *window, *dry_run)
    assert not ModerationAction.objects.exists()
