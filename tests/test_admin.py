"""Admin moderation: a moderator inspects, previews, rolls back, undoes, bans."""

import importlib
import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.apps import apps as django_apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from canvas import moderation, selectors, services
from canvas import moderation_forms as forms
from canvas.models import (
    Canvas,
    Connection,
    Cooldown,
    ModerationAction,
    Placement,
    Player,
)

group_migration = importlib.import_module("canvas.migrations.0005_moderators_group")


@pytest.fixture
def moderators(db):
    """The group the migration made (made again if a flushing test removed it)."""
    group_migration.create_group(django_apps, None)
    return Group.objects.get(name="Moderators")


@pytest.fixture
def moderator(client, moderators):
    user = get_user_model().objects.create_user(
        username="mod", password="pw-123456!", is_staff=True
    )
    user.groups.add(moderators)
    client.force_login(user)
    return user


@pytest.fixture
def griefed(make_canvas):
    """bob paints (1,1) blue; alice paints over it and over (2,1)."""
    canvas = make_canvas(cooldown=0)
    alice = Player.objects.create(name="alice")
    bob = Player.objects.create(name="bob")
    for player, x, color in [(bob, 1, 12), (alice, 1, 5), (alice, 2, 5)]:
        services.placement_create(
            canvas_id=canvas.pk, player_id=player.pk, x=x, y=1, color=color
        )
    return canvas, alice, bob


def test_moderators_group_has_exactly_the_moderation_permissions(moderators):
    codenames = set(moderators.permissions.values_list("codename", flat=True))
    assert codenames == {
        "view_canvas",
        "view_placement",
        "view_player",
        "view_moderationaction",
        "rollback_placements",
        "ban_player",
        "moderate_canvas",
    }


def test_history_filters_by_region_time_and_player(moderator, client, griefed):
    canvas, alice, _ = griefed
    url = reverse("admin:canvas_placement_changelist")
    response = client.get(
        url,
        {
            "canvas__id__exact": canvas.pk,
            "x__gte": 2,
            "x__lte": 2,
            "y__gte": 0,
            "y__lte": 1,
            "placed_at__gte": "2000-01-01T00:00Z",
        },
    )
    assert response.status_code == 200
    assert [p.seq for p in response.context["cl"].result_list] == [3]
    response = client.get(url, {"player__id__exact": alice.pk})
    assert [p.seq for p in response.context["cl"].result_list] == [3, 2]
    response = client.get(url, {"q": "bob"})
    assert [p.seq for p in response.context["cl"].result_list] == [1]


def test_pixel_history_lists_every_change_newest_first(moderator, client, griefed):
    canvas, _, _ = griefed
    response = client.get(
        reverse("admin:canvas_placement_changelist"),
        {"canvas__id__exact": canvas.pk, "x": 1, "y": 1},
    )
    assert [p.seq for p in response.context["cl"].result_list] == [2, 1]


def test_player_page_shows_counts_and_history_link(moderator, client, griefed):
    _, alice, _ = griefed
    response = client.get(reverse("admin:canvas_player_change", args=[alice.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "placements" in content
    assert f"player__id__exact={alice.pk}" in content
    assert reverse("admin:canvas_player_ban", args=[alice.pk]) in content


def test_rollback_preview_shows_counts_and_pictures_then_applies(
    moderator, client, griefed
):
    canvas, alice, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    query = f"?canvas={canvas.pk}&players=alice"
    response = client.get(url + query)
    assert response.status_code == 200
    preview = response.context["preview"]
    assert (preview.placements, preview.pixels) == (2, 2)
    assert response.context["before_png"].startswith("data:image/png;base64,")
    assert not Placement.objects.filter(rolled_back=True).exists()

    refused = client.post(url + query, {"reason": ""})
    assert refused.status_code == 200
    assert not ModerationAction.objects.exists()

    response = client.post(url + query, {"reason": "griefing"})
    action = ModerationAction.objects.get()
    assert response.status_code == 302
    assert (action.moderator, action.reason) == (moderator, "griefing")
    assert (action.placements_count, action.pixels_count) == (2, 2)
    assert LogEntry.objects.filter(object_id=str(action.pk)).exists()
    canvas.refresh_from_db()
    board = selectors.board_assemble(canvas)
    assert (board[canvas.width + 1], board[canvas.width + 2]) == (12, 0)
    assert canvas.seq == 5


def test_selected_placements_action_leads_to_the_preview(moderator, client, griefed):
    canvas, _, _ = griefed
    ids = list(Placement.objects.filter(seq__in=[2, 3]).values_list("pk", flat=True))
    response = client.post(
        reverse("admin:canvas_placement_changelist"),
        {"action": "rollback_selected", "_selected_action": ids},
    )
    assert response.status_code == 302
    preview = client.get(response.url)
    shown = preview.context["preview"]
    assert (shown.placements, shown.pixels) == (2, 2)


def test_undo_restores_the_rollback(moderator, client, griefed):
    canvas, alice, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    client.post(url + f"?canvas={canvas.pk}&players=alice", {"reason": "grief"})
    action = ModerationAction.objects.get()
    page = client.get(reverse("admin:canvas_moderationaction_change", args=[action.pk]))
    undo_url = reverse("admin:canvas_moderationaction_undo", args=[action.pk])
    assert undo_url in page.content.decode()
    response = client.post(undo_url, {"reason": "wrong player"})
    assert response.status_code == 302
    undo = ModerationAction.objects.get(kind=ModerationAction.KIND_UNDO)
    assert (undo.placements_count, undo.pixels_count) == (2, 2)
    assert not Placement.objects.filter(rolled_back=True).exists()


def test_ban_and_unban_from_the_player_page(moderator, client, griefed):
    _, alice, _ = griefed
    response = client.post(
        reverse("admin:canvas_player_ban", args=[alice.pk]),
        {"reason": "grief", "hours": "", "rollback_hours": "1"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.is_banned()
    assert Placement.objects.filter(player=alice, rolled_back=True).count() == 2
    logged = LogEntry.objects.order_by("pk").values_list("change_message", flat=True)
    assert [m.split(":")[0] for m in logged] == [
        "banned alice",
        "rolled back alice's last 1 h",
    ]
    client.post(
        reverse("admin:canvas_player_unban", args=[alice.pk]), {"reason": "appeal"}
    )
    alice.refresh_from_db()
    assert not alice.is_banned()


def test_pause_and_cooldown_from_the_canvas_page(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_moderate", args=[canvas.pk])
    assert client.get(url).status_code == 200
    client.post(url, {"open-reason": "raid", "open-is_open": "0"})
    assert not Canvas.objects.get(pk=canvas.pk).is_open
    client.post(url, {"cooldown-cooldown_seconds": "60", "cooldown-reason": "event"})
    assert Canvas.objects.get(pk=canvas.pk).cooldown_seconds == 60
    kinds = ModerationAction.objects.order_by("pk").values_list("kind", flat=True)
    assert list(kinds) == ["pause", "cooldown"]
    change = ModerationAction.objects.get(kind=ModerationAction.KIND_COOLDOWN)
    page = client.get(reverse("admin:canvas_moderationaction_change", args=[change.pk]))
    assert "cooldown 0 s → 60 s" in page.content.decode()


def test_region_picture_at_an_instant_is_a_png(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_region_png", args=[canvas.pk])
    response = client.get(url, {"x0": 0, "y0": 0, "x1": 3, "y1": 2})
    assert response["Content-Type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    old = client.get(url, {"x0": 0, "y0": 0, "x1": 3, "y1": 2, "at": "2001-01-01"})
    assert old.status_code == 200


def test_moderation_log_lists_actions(moderator, client, griefed):
    canvas, alice, _ = griefed
    client.post(reverse("admin:canvas_player_ban", args=[alice.pk]), {"reason": "spam"})
    response = client.get(reverse("admin:canvas_moderationaction_changelist"))
    assert response.status_code == 200
    assert "spam" in response.content.decode()


@pytest.mark.parametrize(
    "name, args",
    [
        ("admin:canvas_placement_changelist", []),
        ("admin:canvas_moderationaction_rollback", []),
        ("admin:canvas_canvas_moderate", ["canvas"]),
        ("admin:canvas_player_ban", ["player"]),
    ],
)
def test_non_staff_users_never_reach_moderation(client, griefed, name, args):
    canvas, alice, _ = griefed
    ids = {"canvas": canvas.pk, "player": alice.pk}
    user = get_user_model().objects.create_user(username="eve", password="pw-1234567")
    client.force_login(user)
    response = client.get(reverse(name, args=[ids[a] for a in args]))
    assert response.status_code == 302
    assert "/admin/login/" in response.url
    response = client.post(
        reverse("admin:canvas_player_ban", args=[alice.pk]), {"reason": "x"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert not alice.is_banned()


def test_staff_without_the_permission_cannot_roll_back(client, griefed):
    canvas, _, _ = griefed
    user = get_user_model().objects.create_user(
        username="helper", password="pw-1234567", is_staff=True
    )
    client.force_login(user)
    url = reverse("admin:canvas_moderationaction_rollback")
    response = client.post(f"{url}?canvas={canvas.pk}&players=alice", {"reason": "x"})
    assert response.status_code == 403
    assert not ModerationAction.objects.exists()


def test_history_ignores_empty_boxes_and_names_a_bad_bound(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_placement_changelist")
    boxes = {"x__gte": 2, "x__lte": 2, "y__gte": "", "y__lte": ""}
    empty_times = {"placed_at__gte": "", "placed_at__lte": " "}
    query = {"canvas__id__exact": canvas.pk, "q": "alice", **boxes, **empty_times}
    response = client.get(url, query)
    assert response.status_code == 200 and "e" not in response.wsgi_request.GET
    assert [p.seq for p in response.context["cl"].result_list] == [3]
    bad = client.get(url, {**query, "placed_at__lte": "yesterday"})
    # The bad bound is named and left out; the rest of the filter still holds.
    assert [p.seq for p in bad.context["cl"].result_list] == [3]
    assert "“until” must be a time" in bad.content.decode()


def test_history_until_keeps_the_whole_second_and_bad_pixel_links_are_named(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_placement_changelist")
    newest = Placement.objects.order_by("-seq").first()
    shown = newest.placed_at.strftime("%Y-%m-%d %H:%M:%S")  # as the list shows it
    response = client.get(
        url, {"canvas__id__exact": canvas.pk, "placed_at__lte": shown}
    )
    assert newest.seq in [p.seq for p in response.context["cl"].result_list]
    # Sending the form again carries the box, not the parsed bound beside it.
    assert all(key != "placed_at__lt" for key, _ in response.context["kept_params"])
    bad = client.get(url, {"canvas__id__exact": canvas.pk, "x": "abc", "y": 1})
    assert bad.status_code == 200
    assert [p.seq for p in bad.context["cl"].result_list] == [3, 2, 1]
    assert "“x” must be a whole number" in bad.content.decode()
    far = client.get(url, {"placed_at__gte": "0001-01-01T00:00+05:00"})
    assert far.status_code == 200


def test_history_times_are_shown_to_the_second(moderator, client, griefed):
    response = client.get(reverse("admin:canvas_placement_changelist"))
    placed = Placement.objects.order_by("-pk").first().placed_at
    assert placed.strftime("%Y-%m-%d %H:%M:%S") in response.content.decode()


@pytest.mark.parametrize(
    "data",
    [{"reason": "x", "hours": "1e9"}, {"reason": "x", "rollback_hours": "1e12"}],
)
def test_absurd_ban_hours_are_a_form_error_and_change_nothing(
    moderator, client, griefed, data
):
    _, alice, _ = griefed
    response = client.post(reverse("admin:canvas_player_ban", args=[alice.pk]), data)
    assert response.status_code == 200
    assert "less than or equal to" in response.content.decode()
    alice.refresh_from_db()
    assert not alice.is_banned() and not ModerationAction.objects.exists()


def test_absurd_cooldown_and_ids_are_form_errors(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_moderate", args=[canvas.pk])
    response = client.post(
        url, {"cooldown-cooldown_seconds": "99999999999999", "cooldown-reason": "x"}
    )
    assert response.status_code == 200
    assert Canvas.objects.get(pk=canvas.pk).cooldown_seconds == 0
    rollback = reverse("admin:canvas_moderationaction_rollback")
    for ids in ["99999999999999999999999", "²"]:
        response = client.get(rollback, {"canvas": canvas.pk, "ids": ids})
        assert response.status_code == 200
        assert "whole numbers" in response.content.decode()
    early = {"canvas": canvas.pk, "since": "0001-01-01T00:00+05:00"}
    response = client.get(rollback, early)
    assert "That time is out of range." in response.content.decode()


def test_a_region_picture_outside_the_canvas_is_refused_like_a_rollback(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_region_png", args=[canvas.pk])
    response = client.get(url, {"x0": 100, "y0": 100, "x1": 200, "y1": 200})
    assert response.status_code == 400
    assert response.content.decode() == (
        "The region must lie inside the canvas, with x0 <= x1 and y0 <= y1:"
        " x must be 0–31 and y 0–15 on canvas test (32×16)."
    )
    early = {"x0": 0, "y0": 0, "x1": 1, "y1": 1, "at": "0001-01-01T00:00+05:00"}
    response = client.get(url, early)
    assert response.status_code == 400
    assert response.content == b"That time is out of range."
    page = client.get(
        reverse("admin:canvas_canvas_moderate", args=[canvas.pk]),
        {"x0": 3, "y0": 0, "x1": 1, "y1": 0},
    )
    assert page.context["region_src"] is None
    assert "x must be 0–31 and y 0–15 on canvas test (32×16)" in page.content.decode()


def test_a_bound_that_is_not_a_number_is_told_the_canvas_bounds(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    bounds = "x must be 0–31 and y 0–15 on canvas test (32×16)."
    url = reverse("admin:canvas_canvas_region_png", args=[canvas.pk])
    response = client.get(url, {"x0": "left", "y0": 0, "x1": 1, "y1": 1})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Enter a whole number." in text and bounds in text
    rollback = reverse("admin:canvas_moderationaction_rollback")
    scope = {"canvas": canvas.pk, "x0": 0, "y0": 0, "x1": "3.5", "y1": 1}
    page = client.get(rollback, scope).content.decode()
    assert "Enter a whole number." in page and bounds in page
    assert "would roll back" not in page  # no preview of a scope that was refused


def test_a_rollback_that_would_mark_nothing_is_not_offered_nor_applied(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    query = f"?canvas={canvas.pk}&players=alice"
    client.post(url + query, {"reason": "griefing"})
    again = client.get(url + query)
    assert again.context["preview"].placements == 0
    assert 'value="Roll back"' not in again.content.decode()
    refused = client.post(url + query, {"reason": "again"})
    assert refused.status_code == 200
    assert moderation.MSG_NOTHING_LEFT in refused.content.decode()
    assert ModerationAction.objects.count() == 1


def test_player_page_hides_the_session_key_and_edits_nothing(
    moderator, client, griefed
):
    _, alice, _ = griefed
    Player.objects.filter(pk=alice.pk).update(session_key="s3cr3t-session-key")
    page = client.get(reverse("admin:canvas_player_change", args=[alice.pk]))
    content = page.content.decode()
    assert "s3cr3t-session-key" not in content
    assert "anonymous (a browser session)" in content
    # Not even a superuser edits or deletes a player here: no audited path.
    boss = get_user_model().objects.create_superuser("boss", password="pw-123456!")
    client.force_login(boss)
    content = client.get(
        reverse("admin:canvas_player_change", args=[alice.pk])
    ).content.decode()
    assert 'name="_save"' not in content
    assert reverse("admin:canvas_player_delete", args=[alice.pk]) not in content


def test_the_unban_link_shows_only_while_a_ban_is_in_force(moderator, client, griefed):
    _, alice, _ = griefed
    page = reverse("admin:canvas_player_change", args=[alice.pk])
    unban = reverse("admin:canvas_player_unban", args=[alice.pk])
    assert unban not in client.get(page).content.decode()
    moderation.player_ban(
        player_id=alice.pk, reason="cool off", duration=timedelta(hours=1)
    )
    assert unban in client.get(page).content.decode()
    Player.objects.filter(pk=alice.pk).update(
        banned_until=timezone.now() - timedelta(minutes=1)
    )  # ran out
    assert unban not in client.get(page).content.decode()


def test_a_form_error_is_shown_once(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    response = client.get(url, {"canvas": canvas.pk})  # an empty scope
    assert response.content.decode().count("Choose placements, players") == 1


def test_the_audit_entry_names_the_players_and_links_from_its_reason(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    client.post(
        url + f"?canvas={canvas.pk}&players=alice&x0=0&y0=0&x1=3&y1=2",
        {"reason": "griefing"},
    )
    action = ModerationAction.objects.get()
    page = client.get(reverse("admin:canvas_moderationaction_change", args=[action.pk]))
    assert "players alice; region (0, 0) to (3, 2) inclusive" in page.content.decode()
    listing = client.get(reverse("admin:canvas_moderationaction_changelist"))
    change = reverse("admin:canvas_moderationaction_change", args=[action.pk])
    assert f'<a href="{change}">griefing</a>' in listing.content.decode()


def test_an_undo_names_the_rollback_that_still_holds_its_placements(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    client.post(url + f"?canvas={canvas.pk}&players=alice", {"reason": "one"})
    region = f"?canvas={canvas.pk}&x0=0&y0=0&x1=3&y1=2"
    client.post(url + region, {"reason": "two"})  # bob's (1,1) besides
    first, second = ModerationAction.objects.order_by("pk")
    undo = reverse("admin:canvas_moderationaction_undo", args=[first.pk])
    page = client.post(undo, {"reason": "oops"}, follow=True)
    assert (
        f"0 placements restored, 0 pixels changed; still rolled back by rollback"
        f" #{second.pk} (2 placements)" in page.content.decode()
    )


def test_a_ban_can_end_at_a_given_time(moderator, client, griefed):
    _, alice, _ = griefed
    url = reverse("admin:canvas_player_ban", args=[alice.pk])
    both = client.post(url, {"reason": "x", "hours": "2", "until": "2099-01-01 00:00"})
    assert "not both" in both.content.decode()
    past = client.post(url, {"reason": "x", "until": "2001-01-01 00:00"})
    assert "must lie in the future" in past.content.decode()
    assert not ModerationAction.objects.exists()
    far = client.post(url, {"reason": "x", "until": "2999-01-01 00:00"})
    assert "within a century" in far.content.decode()
    response = client.post(url, {"reason": "x", "until": "2099-01-01 12:30:00"})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.banned_until.isoformat().startswith("2099-01-01T12:30:00")


def test_the_history_offers_to_roll_back_exactly_what_it_shows(
    moderator, client, griefed
):
    canvas, alice, _ = griefed
    history = reverse("admin:canvas_placement_changelist")
    query = {
        "canvas__id__exact": canvas.pk,
        "player__id__exact": alice.pk,
        "x__gte": 2,
        "placed_at__gte": "2000-01-01 00:00",
    }
    listed = client.get(history, query)
    shown = [p.pk for p in listed.context["cl"].result_list]
    link = listed.context["rollback_url"]
    preview = client.get(link)
    assert preview.context["preview"].placements == len(shown) == 1
    assert preview.context["scope_form"].cleaned_data["players"] == (alice.pk,)
    # A name search is not a scope: no link rather than a different one.
    assert client.get(history, {**query, "q": "ali"}).context["rollback_url"] is None
    # Bounds past the canvas's edge list nothing, so offer nothing.
    beyond = {"canvas__id__exact": canvas.pk, "x__gte": 100}
    assert client.get(history, beyond).context["rollback_url"] is None


def apply_form(page) -> dict:
    """The apply form's hidden fields as the preview page rendered them."""
    form = page.context["reason_form"]
    return {name: form[name].value() for name in form.fields if name != "reason"}


@pytest.mark.django_db(transaction=True)
def test_an_apply_form_sent_three_times_at_once_records_one_undoable_rollback(
    moderator, griefed, monkeypatch
):
    """Three concurrent POSTs of one preview's form, each on its own database
    connection: one rollback is recorded, the others say nothing was left, and
    undoing the one restores alice's pixels."""
    import threading

    from django.db import connections
    from django.test import Client

    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    url += f"?canvas={canvas.pk}&players=alice"
    clients = [Client() for _ in range(3)]
    for client in clients:
        client.force_login(moderator)
    form = {"reason": "raid", **apply_form(clients[0].get(url))}
    # Every request has read what is pending before any of them marks it.
    together = threading.Barrier(3, timeout=20)
    batches = moderation._batches

    def batches_together(**kwargs):
        found = batches(**kwargs)
        together.wait()
        return found

    monkeypatch.setattr(moderation, "_batches", batches_together)
    responses = [None] * 3

    def send(index: int) -> None:
        try:
            responses[index] = clients[index].post(url, form)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.status_code for r in responses) == [200, 200, 302]
    for refused in [r for r in responses if r.status_code == 200]:
        assert moderation.MSG_NOTHING_LEFT in refused.content.decode()
    (action,) = ModerationAction.objects.filter(kind=ModerationAction.KIND_ROLLBACK)
    assert (action.placements_count, action.pixels_count) == (2, 2)

    monkeypatch.undo()  # undo runs in batches too, alone
    undo = reverse("admin:canvas_moderationaction_undo", args=[action.pk])
    page = clients[0].post(undo, {"reason": "wrong"}, follow=True).content.decode()
    assert "2 placements restored, 2 pixels changed" in page
    assert "still rolled back" not in page
    canvas.refresh_from_db()
    board = selectors.board_assemble(canvas)
    assert (board[canvas.width + 1], board[canvas.width + 2]) == (5, 5)


@pytest.fixture
def namesakes(make_canvas):
    """An anonymous player and an account that (before sign-up refused it) took
    the same name each paint a pixel."""
    canvas = make_canvas(cooldown=0)
    anonymous = Player.objects.create(name="anon-88605a", session_key="s" * 32)
    user = get_user_model().objects.create_user(username="anon-88605a")
    account = services.player_for_user(user=user)
    for player, x in [(anonymous, 1), (account, 2)]:
        services.placement_create(
            canvas_id=canvas.pk, player_id=player.pk, x=x, y=0, color=5
        )
    return canvas, anonymous, account


def test_rolling_back_a_players_history_spares_a_namesake(moderator, client, namesakes):
    canvas, anonymous, account = namesakes
    history = reverse("admin:canvas_placement_changelist")
    listed = client.get(
        history, {"canvas__id__exact": canvas.pk, "player__id__exact": anonymous.pk}
    )
    preview = client.get(listed.context["rollback_url"])
    assert preview.context["preview"].placements == 1
    response = client.post(
        listed.context["rollback_url"], {"reason": "grief", **apply_form(preview)}
    )
    assert response.status_code == 302
    rolled_back = Placement.objects.filter(rolled_back=True)
    assert [p.player_id for p in rolled_back] == [anonymous.pk]
    audit = client.get(response.url).content.decode()
    assert f"players anon-88605a (#{anonymous.pk})" in audit


def test_a_typed_name_two_players_share_is_refused_listing_them(
    moderator, client, namesakes
):
    canvas, anonymous, account = namesakes
    url = reverse("admin:canvas_moderationaction_rollback")
    page = client.get(url, {"canvas": canvas.pk, "players": "anon-88605a"})
    text = page.content.decode()
    assert "is the name of several players" in text
    assert f"#{anonymous.pk} (anonymous), #{account.pk} (account)" in text
    assert page.context.get("preview") is None
    page = client.get(url, {"canvas": canvas.pk, "players": f"#{account.pk}"})
    assert page.context["preview"].placements == 1


def test_apply_rolls_back_only_what_the_preview_showed(moderator, client, make_canvas):
    """Preview a rectangle since an instant; another player then paints inside
    it; applying that preview leaves the new work alone."""
    from django.utils import timezone

    canvas = make_canvas(cooldown=0)
    mallory = Player.objects.create(name="mallory")
    painter = Player.objects.create(name="painter")
    since = timezone.now().isoformat()
    for i in range(16):
        services.placement_create(
            canvas_id=canvas.pk, player_id=mallory.pk, x=i % 4, y=i // 4, color=3
        )
    url = reverse("admin:canvas_moderationaction_rollback")
    scope = {"canvas": canvas.pk, "x0": 0, "y0": 0, "x1": 7, "y1": 7, "since": since}
    query = url + "?" + "&".join(f"{k}={v}" for k, v in scope.items())
    query = query.replace("+", "%2B")
    preview = client.get(query)
    assert preview.context["preview"].placements == 16
    for i in range(64):
        services.placement_create(
            canvas_id=canvas.pk, player_id=painter.pk, x=i % 8, y=i // 8, color=9
        )
    response = client.post(query, {"reason": "grief", **apply_form(preview)})
    assert response.status_code == 302
    action = ModerationAction.objects.get()
    assert action.placements_count == 16
    assert not Placement.objects.filter(player=painter, rolled_back=True).exists()
    canvas.refresh_from_db()
    board = selectors.board_assemble(canvas)
    assert all(board[y * canvas.width + x] == 9 for x in range(8) for y in range(8))


def roll_back_all_selected(client, canvas, **kwargs):
    """The history's "Select all N placements", then "Roll back selected…"."""
    history = reverse("admin:canvas_placement_changelist")
    return client.post(
        f"{history}?canvas__id__exact={canvas.pk}",
        {
            "action": "rollback_selected",
            "select_across": "1",
            "index": "0",
            "_selected_action": [Placement.objects.first().pk],
        },
        **kwargs,
    )


def test_selecting_thousands_of_placements_previews_and_rolls_them_back(
    moderator, client, make_canvas
):
    """ "Select all" over 3,000 placements: the preview opens with all of them
    (no id list in the address) and applying rolls all of them back."""
    from django.db import transaction

    canvas = make_canvas(width=64, height=64, cooldown=0)
    mallory = Player.objects.create(name="mallory")
    with transaction.atomic():
        for i in range(3000):
            services.placement_create(
                canvas_id=canvas.pk, player_id=mallory.pk, x=i % 64, y=i // 64, color=3
            )
    response = roll_back_all_selected(client, canvas)
    assert response.status_code == 302
    assert len(response.url) < 200
    preview = client.get(response.url)
    assert (
        preview.context["preview"].placements,
        preview.context["preview"].pixels,
    ) == (
        3000,
        3000,
    )
    applied = client.post(
        response.url, {"reason": "raid", **apply_form(preview)}, follow=True
    )
    # Counts as a moderator reads them (the command's line is the contract's).
    assert (
        "would roll back <strong>3,000</strong> placements" in preview.content.decode()
    )
    assert (
        "3,000 placements rolled back, 3,000 pixels changed" in applied.content.decode()
    )
    assert Placement.objects.filter(rolled_back=True).count() == 3000


def test_an_undo_names_every_rollback_that_still_covers_its_placements(
    moderator, client, griefed
):
    canvas, alice, _ = griefed
    carol = Player.objects.create(name="carol")
    services.placement_create(
        canvas_id=canvas.pk, player_id=carol.pk, x=3, y=1, color=7
    )
    alice_at_1_1 = Placement.objects.get(player=alice, x=1).pk
    carols = Placement.objects.get(player=carol).pk
    url = reverse("admin:canvas_moderationaction_rollback")
    client.post(url + f"?canvas={canvas.pk}&players=alice", {"reason": "one"})
    client.post(url + f"?canvas={canvas.pk}&x0=0&y0=0&x1=1&y1=2", {"reason": "two"})
    client.post(
        url + f"?canvas={canvas.pk}&ids={alice_at_1_1},{carols}", {"reason": "3"}
    )
    first, second, third = ModerationAction.objects.order_by("pk")
    undo = reverse("admin:canvas_moderationaction_undo", args=[first.pk])
    page = client.post(undo, {"reason": "oops"}, follow=True).content.decode()
    assert (
        f"still rolled back by rollback #{second.pk} (1 placement),"
        f" rollback #{third.pk} (1 placement)" in page
    )


def test_since_after_until_is_refused(moderator, client, griefed):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    page = client.get(
        url,
        {"canvas": canvas.pk, "since": "2030-01-02 00:00", "until": "2030-01-01 00:00"},
    )
    assert moderation.MSG_BAD_WINDOW in page.content.decode()
    assert page.context.get("preview") is None
    response = client.post(
        url + f"?canvas={canvas.pk}&since=2030-01-02&until=2030-01-01", {"reason": "x"}
    )
    assert moderation.MSG_BAD_WINDOW in response.content.decode()
    assert not ModerationAction.objects.exists()


def test_a_negative_bound_names_the_canvas_bounds_once(moderator, client, griefed):
    from canvas.moderation_forms import MSG_REGION_PARTIAL

    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    page = client.get(url, {"canvas": canvas.pk, "x0": -5, "y0": 0, "x1": 3, "y1": 2})
    text = page.content.decode()
    # Not "greater than or equal to 0" alone: the canvas's bounds, once.
    assert text.count("x must be 0–31 and y 0–15 on canvas test (32×16)") == 1
    assert MSG_REGION_PARTIAL not in text
    partial = client.get(url, {"canvas": canvas.pk, "x0": 1})
    assert MSG_REGION_PARTIAL in partial.content.decode()


def test_a_selection_over_the_limit_is_sent_to_a_scope_instead(
    moderator, client, make_canvas, monkeypatch
):
    """Every selected id lives in the session and the preview's queries: past
    the limit the moderator is told to use a scope, nothing is stored."""
    from canvas import admin as canvas_admin

    monkeypatch.setattr(canvas_admin, "SELECTION_MAX", 20)
    canvas = make_canvas(width=16, height=16, cooldown=0)
    mallory = Player.objects.create(name="mallory")
    for i in range(21):
        services.placement_create(
            canvas_id=canvas.pk, player_id=mallory.pk, x=i % 16, y=i // 16, color=3
        )
    page = roll_back_all_selected(client, canvas, follow=True).content.decode()
    assert "That selection is over 20 placements" in page
    assert "Roll back what this list shows" in page
    assert not Placement.objects.filter(rolled_back=True).exists()
    assert "canvas_rollback_selections" not in client.session


def list_queries(queries) -> list[str]:
    """The SQL of a history page's row queries (not its count)."""
    return [
        q["sql"]
        for q in queries
        if 'FROM "canvas_placement"' in q["sql"] and "COUNT(" not in q["sql"]
    ]


def test_the_canvas_filter_applies_when_there_is_only_one_canvas(
    moderator, client, griefed
):
    """Django hides a one-choice filter and drops its parameter with it: the
    list then read every canvas's rows, with no (canvas, ...) index to use."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    canvas, _, _ = griefed
    Canvas.objects.exclude(pk=canvas.pk).delete()
    url = reverse("admin:canvas_placement_changelist")
    with CaptureQueriesContext(connection) as queries:
        page = client.get(url, {"canvas__id__exact": canvas.pk, "x": 1, "y": 1})
    assert [p.seq for p in page.context["cl"].result_list] == [2, 1]
    assert "By canvas" in page.content.decode()
    (rows,) = list_queries(queries)
    assert f'"canvas_placement"."canvas_id" = {canvas.pk}' in rows
    # A canvas that is not there lists nothing, rather than everything.
    other = client.get(url, {"canvas__id__exact": canvas.pk + 1})
    assert list(other.context["cl"].result_list) == []


def test_a_time_window_lists_newest_first_by_time(moderator, client, griefed):
    """Ordered by placed_at, which (canvas, placed_at) serves, not by id."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    canvas, _, _ = griefed
    first = Placement.objects.get(seq=1)
    Placement.objects.filter(pk=first.pk).update(
        placed_at=first.placed_at + timedelta(hours=1)
    )
    with CaptureQueriesContext(connection) as queries:
        page = client.get(
            reverse("admin:canvas_placement_changelist"),
            {"canvas__id__exact": canvas.pk, "placed_at__gte": "2000-01-01 00:00"},
        )
    assert [p.seq for p in page.context["cl"].result_list] == [1, 3, 2]
    (rows,) = list_queries(queries)
    order = 'ORDER BY "canvas_placement"."placed_at" DESC, "canvas_placement"."id" DESC'
    assert order in rows


def test_the_moderation_filter_reads_its_own_index(griefed):
    """Moderation rows are a sliver of the history: a partial index finds them."""
    from django.db import connection

    canvas, alice, _ = griefed
    moderation.placements_rollback(
        canvas_id=canvas.pk,
        scope=moderation.Scope(player_ids=(alice.pk,)),
        reason="grief",
    )
    moderated = Placement.objects.filter(
        canvas_id=canvas.pk, kind=Placement.KIND_MODERATION
    ).order_by("-pk")
    if connection.vendor == "postgresql":
        # A table this small is read whole whatever the indexes; forbid that.
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
        try:
            plan = moderated.explain()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET enable_seqscan")
    else:
        plan = moderated.explain()
    assert "placement_moderation" in plan
    assert moderated.count() == 2


def test_select_all_reads_the_canvases_without_the_lists_order(
    moderator, client, griefed
):
    """With the list's ORDER BY id, DISTINCT canvas_id returned every row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    canvas, _, _ = griefed
    with CaptureQueriesContext(connection) as queries:
        response = roll_back_all_selected(client, canvas)
    assert response.status_code == 302
    (distinct,) = [q["sql"] for q in queries if "DISTINCT" in q["sql"]]
    assert "ORDER BY" not in distinct
    assert '"canvas_placement"."id"' not in distinct
    preview = client.get(response.url).context["preview"]
    assert preview.placements == 3


def test_a_capped_count_says_so_and_its_pages_end_at_the_cap(
    moderator, client, make_canvas, monkeypatch
):
    """Past the cap the page says "N+", never a made-up exact count, and its
    last page is full: the rows past the cap are reached by filtering."""
    from canvas import admin as canvas_admin

    monkeypatch.setattr(canvas_admin, "COUNT_CAP", 4)
    monkeypatch.setattr(canvas_admin.PlacementAdmin, "list_per_page", 2)
    canvas = make_canvas(cooldown=0)
    painter = Player.objects.create(name="painter")
    for x in range(6):
        services.placement_create(
            canvas_id=canvas.pk, player_id=painter.pk, x=x, y=0, color=3
        )
    url = reverse("admin:canvas_placement_changelist")
    page = client.get(url, {"canvas__id__exact": canvas.pk})
    text = page.content.decode()
    assert "4+ placements" in text
    assert "Select all 4+ placements" in text
    assert "All 4+ selected" in text
    assert "5 placements" not in text
    assert "4+ results" in client.get(url, {"q": "painter"}).content.decode()
    last = client.get(url, {"canvas__id__exact": canvas.pk, "p": 2})
    assert [p.seq for p in last.context["cl"].result_list] == [4, 3]
    past = client.get(url, {"canvas__id__exact": canvas.pk, "p": 3})
    assert past.status_code == 302  # past the last page, as anywhere in admin
    few = client.get(url, {"canvas__id__exact": canvas.pk, "x__lte": 1})
    assert "2 placements" in few.content.decode()


def test_a_second_pause_leaves_the_canvas_paused(moderator, client, griefed):
    """Two moderators (or one form sent again) pausing during a raid: the
    second "Pause" used to resume the canvas, recorded as a resume."""
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_moderate", args=[canvas.pk])
    page = client.get(url)
    assert page.context["open_form"]["is_open"].value() == "0"
    pause = {"open-reason": "raid", "open-is_open": "0"}
    client.post(url, pause)
    again = client.post(url, {**pause, "open-reason": "raid, pausing"}, follow=True)
    assert not Canvas.objects.get(pk=canvas.pk).is_open
    assert moderation.MSG_ALREADY_PAUSED in again.content.decode()
    kinds = ModerationAction.objects.values_list("kind", flat=True)
    assert list(kinds) == [ModerationAction.KIND_PAUSE]
    # The page now offers to resume, and that resumes.
    assert client.get(url).context["open_form"]["is_open"].value() == "1"
    client.post(url, {"open-reason": "over", "open-is_open": "1"})
    assert Canvas.objects.get(pk=canvas.pk).is_open


def test_a_pause_post_that_does_not_say_which_changes_nothing(
    moderator, client, griefed
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_canvas_moderate", args=[canvas.pk])
    page = client.post(url, {"open-reason": "raid"})
    assert page.status_code == 200
    assert page.context["open_form"].errors
    assert Canvas.objects.get(pk=canvas.pk).is_open
    assert not ModerationAction.objects.exists()


@pytest.mark.parametrize(
    "narrowed",
    [{"color__exact": 5}, {"seq__gte": 3}, {"placed_at__gt": "2999-01-01T00:00Z"}],
)
def test_a_list_narrowed_by_a_lookup_no_scope_says_offers_no_rollback(
    moderator, client, griefed, narrowed
):
    """The link would roll back every placement of the player, not the rows
    the list shows (`placed_at__gt` in the future: none)."""
    canvas, alice, _ = griefed
    history = reverse("admin:canvas_placement_changelist")
    query = {"canvas__id__exact": canvas.pk, "player__id__exact": alice.pk}
    assert client.get(history, query).context["rollback_url"] is not None
    listed = client.get(history, {**query, **narrowed})
    assert listed.status_code == 200
    assert listed.context["rollback_url"] is None


def test_a_ban_says_what_its_rollback_did(moderator, client, griefed):
    _, alice, _ = griefed
    url = reverse("admin:canvas_player_ban", args=[alice.pk])
    page = client.post(url, {"reason": "grief", "rollback_hours": "1"}, follow=True)
    rollback = ModerationAction.objects.get(kind=ModerationAction.KIND_ROLLBACK)
    shown = [str(m) for m in page.context["messages"]]
    assert shown == [
        f"Banned alice for good. Rolled back 2 placements on {rollback.canvas.slug},"
        f" 2 pixels changed (rollback #{rollback.pk})."
    ]
    unban = reverse("admin:canvas_player_unban", args=[alice.pk])
    page = client.post(unban, {"reason": "appeal"}, follow=True)
    assert [str(m) for m in page.context["messages"]] == [
        "Unbanned alice: they may place again."
    ]
    # Sent again (a second moderator, the back button): nothing to lift.
    recorded = ModerationAction.objects.count()
    page = client.post(unban, {"reason": "appeal"}, follow=True)
    assert [str(m) for m in page.context["messages"]] == [
        "That player is not banned; nothing was done."
    ]
    assert ModerationAction.objects.count() == recorded


def test_a_rollback_of_one_player_is_found_under_their_name(moderator, client, griefed):
    canvas, alice, bob = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    scope = {"canvas": canvas.pk, "players": "alice"}
    preview = client.get(url, scope)
    client.post(
        f"{url}?canvas={canvas.pk}&players=alice",
        {"reason": "grief", **apply_form(preview)},
    )
    log = reverse("admin:canvas_moderationaction_changelist")
    found = client.get(log, {"q": "alice"}).context["cl"].result_list
    assert [(a.kind, a.player_id) for a in found] == [("rollback", alice.pk)]
    assert not client.get(log, {"q": "bob"}).context["cl"].result_list


def test_the_canvas_page_gives_each_box_its_own_id(moderator, client, griefed):
    """The rollback and region forms share field names; clicking a label of
    one must not focus a box of the other."""
    canvas, _, _ = griefed
    page = client.get(reverse("admin:canvas_canvas_moderate", args=[canvas.pk]))
    ids = re.findall(r'\sid="([^"]+)"', page.content.decode())
    assert len(ids) == len(set(ids))
    assert "id_region_x0" in ids


def test_a_ban_never_silently_shortens_the_one_in_force(moderator, client, griefed):
    """A second moderator's one-hour ban used to replace a ban for good, the
    ban page not even saying the player was banned."""
    _, alice, _ = griefed
    url = reverse("admin:canvas_player_ban", args=[alice.pk])
    client.post(url, {"reason": "for good"})
    page = client.get(url)
    assert "alice is banned already, for good: “for good”" in page.content.decode()
    refused = client.post(url, {"reason": "cool off", "hours": "1"})
    assert forms.MSG_BAN_SHORTER in refused.context["form"].non_field_errors()
    alice.refresh_from_db()
    assert alice.banned_until == moderation.BAN_FOREVER
    assert alice.ban_reason == "for good"
    client.post(url, {"reason": "cool off", "hours": "1", "shorten": "on"})
    alice.refresh_from_db()
    assert alice.is_banned() and alice.banned_until < moderation.BAN_FOREVER
    # A longer ban needs no tick.
    client.post(url, {"reason": "again", "until": "2099-01-01 00:00"})
    alice.refresh_from_db()
    assert alice.banned_until.year == 2099


def test_the_player_pages_say_for_good_not_the_year_9999(moderator, client, griefed):
    _, alice, _ = griefed
    client.post(reverse("admin:canvas_player_ban", args=[alice.pk]), {"reason": "x"})
    listed = client.get(reverse("admin:canvas_player_changelist")).content.decode()
    shown = client.get(reverse("admin:canvas_player_change", args=[alice.pk]))
    for text in (listed, shown.content.decode()):
        assert "for good" in text
        assert "9999" not in text


def test_the_undo_page_says_what_undoing_restores_and_what_still_holds(
    moderator, client, griefed
):
    """Before, it showed a reason box only: that some placements would stay
    rolled back, or that a rollback held more than it marked, was learnt after."""
    canvas, alice, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    client.post(url + f"?canvas={canvas.pk}&players=alice", {"reason": "one"})
    client.post(url + f"?canvas={canvas.pk}&x0=0&y0=0&x1=3&y1=2", {"reason": "two"})
    first, second = ModerationAction.objects.order_by("pk")
    undo_first = reverse("admin:canvas_moderationaction_undo", args=[first.pk])
    notice = client.get(undo_first).context["notice"]
    assert f"Rollback #{first.pk} on {canvas.slug}, by mod at " in notice
    assert "(“one”): players alice." in notice
    assert "It rolled back 2 placements and changed 2 pixels." in notice
    assert f"until these are undone too: rollback #{second.pk} (2 placements)" in (
        notice
    )
    client.post(undo_first, {"reason": "oops"})
    assert "already been undone" in client.get(undo_first).context["notice"]
    undo_second = reverse("admin:canvas_moderationaction_undo", args=[second.pk])
    notice = client.get(undo_second).context["notice"]
    assert "It rolled back 1 placement and changed 1 pixel." in notice
    assert "It holds 3 placements now" in notice


def test_the_preview_names_its_scope_in_words(moderator, client, griefed):
    canvas, alice, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    page = client.get(
        url,
        {
            "canvas": canvas.pk,
            "players": f"#{alice.pk}",
            "x0": 0,
            "y0": 0,
            "x1": 3,
            "y1": 2,
        },
    )
    assert "Scope: players alice; region (0, 0) to (3, 2) inclusive." in (
        page.content.decode()
    )


def test_counts_of_one_read_in_the_singular(moderator, client, griefed):
    """The preview, its scope, the applied and undone messages, the undo page
    and the admin log said "1 placements" and "1 pixels"."""
    canvas, alice, _ = griefed
    one = Placement.objects.get(player=alice, x=2).pk
    url = reverse("admin:canvas_moderationaction_rollback")
    query = f"?canvas={canvas.pk}&ids={one}"
    preview = client.get(url + query)
    text = preview.content.decode()
    assert (
        "This would roll back <strong>1</strong> placement and change"
        " <strong>1</strong> pixel." in text
    )
    assert "Scope: 1 placement chosen." in text
    applied = client.post(
        url + query, {"reason": "grief", **apply_form(preview)}, follow=True
    )
    assert [str(m) for m in applied.context["messages"]] == [
        "1 placement rolled back, 1 pixel changed"
    ]
    action = ModerationAction.objects.get()
    logged = LogEntry.objects.get(object_id=str(action.pk))
    assert logged.change_message == "1 placement rolled back, 1 pixel changed"
    undo = reverse("admin:canvas_moderationaction_undo", args=[action.pk])
    notice = client.get(undo).context["notice"]
    assert "It rolled back 1 placement and changed 1 pixel." in notice
    undone = client.post(undo, {"reason": "oops"}, follow=True)
    assert [str(m) for m in undone.context["messages"]] == [
        f"undid rollback #{action.pk}: 1 placement restored, 1 pixel changed"
    ]


def test_a_ban_counts_its_rollback_in_the_singular(moderator, client, griefed):
    """bob's one placement lies under alice's: one placement, no pixel."""
    canvas, _, bob = griefed
    url = reverse("admin:canvas_player_ban", args=[bob.pk])
    page = client.post(url, {"reason": "grief", "rollback_hours": "1"}, follow=True)
    rollback = ModerationAction.objects.get(kind=ModerationAction.KIND_ROLLBACK)
    assert [str(m) for m in page.context["messages"]] == [
        f"Banned bob for good. Rolled back 1 placement on {canvas.slug},"
        f" 0 pixels changed (rollback #{rollback.pk})."
    ]
    logged = LogEntry.objects.get(object_id=str(rollback.pk))
    assert logged.change_message == "rolled back bob's last 1 h: 1 placement"


@pytest.mark.parametrize(
    "region",
    [
        {"x0": 0, "y0": 0, "x1": 32, "y1": 1},  # one past the right edge
        {"x0": 3, "y0": 0, "x1": 1, "y1": 1},  # back to front
        {"x0": 0, "y0": -1, "x1": 1, "y1": 1},  # above the top
    ],
)
def test_a_rollback_outside_the_canvas_names_its_bounds(
    moderator, client, griefed, region
):
    canvas, _, _ = griefed
    url = reverse("admin:canvas_moderationaction_rollback")
    query = {"canvas": canvas.pk, "players": "alice", **region}
    bounds = "x must be 0–31 and y 0–15 on canvas test (32×16)."
    preview = client.get(url, query)
    assert preview.context.get("preview") is None
    assert preview.content.decode().count(bounds) == 1
    applied = client.post(f"{url}?{urlencode(query)}", {"reason": "grief"})
    assert applied.status_code == 200
    assert bounds in applied.content.decode()
    assert not ModerationAction.objects.exists()


@pytest.fixture
def boss(client, db):
    """A superuser: every model permission, so only the admin itself can refuse."""
    user = get_user_model().objects.create_superuser("boss", password="pw-123456!")
    client.force_login(user)
    return user


@pytest.fixture
def cooling(make_canvas):
    """mallory placed, so has a cooldown row, and has a socket open."""
    canvas = make_canvas(cooldown=300)
    mallory = Player.objects.create(name="mallory")
    services.placement_create(
        canvas_id=canvas.pk, player_id=mallory.pk, x=0, y=0, color=3
    )
    socket = Connection.objects.create(
        channel_name="specific.test!abc", canvas=canvas, player=mallory, server="s:1"
    )
    return canvas, Cooldown.objects.get(player=mallory), socket


@pytest.mark.parametrize("model", ["cooldown", "connection"])
def test_cooldowns_and_connections_are_view_only_even_for_a_superuser(
    boss, client, cooling, model
):
    """Superusers could edit and delete these rows with no audit record."""
    _, cooldown, socket = cooling
    row = {"cooldown": cooldown, "connection": socket}[model]
    listing = client.get(reverse(f"admin:canvas_{model}_changelist"))
    assert listing.status_code == 200
    text = listing.content.decode()
    assert "Read-only:" in text
    assert reverse(f"admin:canvas_{model}_add") not in text
    assert "delete_selected" not in text
    change = reverse(f"admin:canvas_{model}_change", args=[row.pk])
    page = client.get(change)
    assert page.status_code == 200
    assert "Read-only:" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert client.post(change, {"next_at_0": "2000-01-01"}).status_code == 403
    assert client.get(reverse(f"admin:canvas_{model}_add")).status_code == 403
    delete = reverse(f"admin:canvas_{model}_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    client.post(
        reverse(f"admin:canvas_{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    before = row.next_at if model == "cooldown" else row.last_seen
    row.refresh_from_db()
    assert (row.next_at if model == "cooldown" else row.last_seen) == before


def test_the_cooldown_list_points_to_the_audited_ways(boss, client, cooling):
    """A cooldown changes for everyone from the canvas's moderate page (which
    shortens running ones, recorded); a player is stopped by a ban."""
    canvas, cooldown, _ = cooling
    for page in (
        client.get(reverse("admin:canvas_cooldown_changelist")),
        client.get(reverse("admin:canvas_cooldown_change", args=[cooldown.pk])),
    ):
        (notice,) = re.findall(r'<p class="help" role="note">(.*?)</p>', page.text)
        assert "use <em>moderate</em> beside it in" in notice
        canvases = reverse("admin:canvas_canvas_changelist")
        players = reverse("admin:canvas_player_changelist")
        assert f'<a href="{canvases}">Canvases</a>' in notice
        assert f'<a href="{players}">Players</a>' in notice
    moderate = reverse("admin:canvas_canvas_moderate", args=[canvas.pk])
    client.post(moderate, {"cooldown-cooldown_seconds": "5", "cooldown-reason": "x"})
    cooldown.refresh_from_db()
    assert cooldown.next_at <= timezone.now() + timedelta(seconds=5)
    action = ModerationAction.objects.get(kind=ModerationAction.KIND_COOLDOWN)
    assert (action.moderator, action.scope) == (boss, {"from": 300, "to": 5})
