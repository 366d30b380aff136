"""Django admin for moderators: history, players, canvases and moderation actions.

Every change a moderator makes goes through canvas/moderation.py, so it is
recorded, broadcast live and logged; no model here is edited directly.
"""

import base64
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import ngettext

from . import moderation
from . import moderation_forms as forms
from . import moderation_selectors as mod_selectors
from .models import Canvas, Connection, Cooldown, ModerationAction, Placement, Player

# Pages never count more rows than this; filters narrow long histories instead.
COUNT_CAP = 10_000
# Before/after pictures are skipped for regions larger than this many pixels.
PREVIEW_MAX_PIXELS = 1_000_000
PERM_ROLLBACK = "canvas.rollback_placements"
PERM_BAN = "canvas.ban_player"
PERM_CANVAS = "canvas.moderate_canvas"
# Selections up to this many ids travel in the preview's URL (so it can be
# shared); longer ones wait in the session, as no URL holds thousands of ids.
URL_IDS_MAX = 200
# The most placements one selection may roll back: each id is kept in the
# moderator's session and bound into the preview's queries. Past it, a scope
# (players, time window, rectangle) does the same job in a few index scans.
SELECTION_MAX = 10_000


class CappedPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 rows, so a page view never counts millions.

    Past the cap the list has COUNT_CAP rows in whole pages and says
    "10,000+" (the admin's templates in templates/admin/canvas/ show
    `count_shown`): the rest is reached by narrowing the filters.
    """

    @cached_property
    def counted(self) -> int:
        return self.object_list.order_by().values("pk")[: COUNT_CAP + 1].count()

    @property
    def capped(self) -> bool:
        return self.counted > COUNT_CAP

    @cached_property
    def count(self) -> int:
        return min(self.counted, COUNT_CAP)

    @property
    def count_shown(self) -> str:
        return f"{COUNT_CAP:,}+" if self.capped else str(self.count)


class CanvasListFilter(admin.RelatedFieldListFilter):
    """The canvas filter, listed and applied even when there is one canvas.

    Django hides a related filter with a single choice and then also drops
    its parameter, so `?canvas__id__exact=1` listed every canvas's rows and
    no (canvas, ...) index could serve the list.
    """

    def has_output(self) -> bool:
        return True


def _require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied


def _log(model_admin, request: HttpRequest, action: ModerationAction, msg: str) -> None:
    """Record the action in Django's admin log as well as the moderation log."""
    model_admin.log_addition(request, action, msg)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _placements(count: int) -> str:
    """A count as a moderator reads it: 1 placement, 2 placements, 12,345 placements.

    Admin only: `manage.py rollback` prints the contract's fixed line instead.
    """
    return ngettext("%(count)s placement", "%(count)s placements", count) % {
        "count": f"{count:,}"
    }


def _pixels(count: int) -> str:
    """A count as a moderator reads it: 1 pixel, 2 pixels, 12,345 pixels."""
    return ngettext("%(count)s pixel", "%(count)s pixels", count) % {
        "count": f"{count:,}"
    }


def _held(held: dict[int, int]) -> str:
    """Rollbacks in force and what each still covers, as still_covered gives them."""
    return ", ".join(
        f"rollback #{pk} ({_placements(count)})" for pk, count in sorted(held.items())
    )


def history_url(**params) -> str:
    return reverse("admin:canvas_placement_changelist") + "?" + urlencode(params)


@admin.register(Canvas)
class CanvasAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "title",
        "width",
        "height",
        "cooldown_seconds",
        "is_open",
        "seq",
        "moderate_link",
    ]
    # Size, cooldown and pause change through services, which tell live sockets.
    readonly_fields = [
        "seq",
        "created_at",
        "width",
        "height",
        "cooldown_seconds",
        "is_open",
    ]
    search_fields = ["slug", "title"]

    def has_add_permission(self, request) -> bool:
        return False  # `manage.py createcanvas` also creates the board's chunks

    @admin.display(description="moderate")
    def moderate_link(self, obj: Canvas) -> str:
        url = reverse("admin:canvas_canvas_moderate", args=[obj.pk])
        return format_html('<a href="{}">moderate</a>', url)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/moderate/",
                view(self.moderate_view),
                name="canvas_canvas_moderate",
            ),
            path(
                "<int:pk>/region.png",
                view(self.region_png_view),
                name="canvas_canvas_region_png",
            ),
            *super().get_urls(),
        ]

    def moderate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Pause or resume, set the cooldown, pick a region to roll back or see."""
        _require(request, "canvas.view_canvas")
        canvas = get_object_or_404(Canvas, pk=pk)
        wanted = "0" if canvas.is_open else "1"
        open_form = forms.OpenForm(prefix="open", initial={"is_open": wanted})
        cooldown_form = forms.CooldownForm(
            prefix="cooldown", initial={"cooldown_seconds": canvas.cooldown_seconds}
        )
        if request.method == "POST":
            _require(request, PERM_CANVAS)
            if "open-reason" in request.POST:
                open_form = forms.OpenForm(request.POST, prefix="open")
                if open_form.is_valid():
                    try:
                        action = moderation.canvas_set_open(
                            canvas_id=canvas.pk,
                            is_open=open_form.cleaned_data["is_open"],
                            reason=open_form.cleaned_data["reason"],
                            moderator_id=request.user.pk,
                        )
                    except moderation.ModerationError as error:
                        self.message_user(request, str(error), messages.WARNING)
                        return redirect("admin:canvas_canvas_moderate", pk=canvas.pk)
                    return self._done(request, action, canvas)
            else:
                cooldown_form = forms.CooldownForm(request.POST, prefix="cooldown")
                if cooldown_form.is_valid():
                    try:
                        action = moderation.canvas_set_cooldown(
                            canvas_id=canvas.pk,
                            cooldown_seconds=cooldown_form.cleaned_data[
                                "cooldown_seconds"
                            ],
                            reason=cooldown_form.cleaned_data["reason"],
                            moderator_id=request.user.pk,
                        )
                    except moderation.ModerationError as error:
                        self.message_user(request, str(error), messages.WARNING)
                        return redirect("admin:canvas_canvas_moderate", pk=canvas.pk)
                    return self._done(request, action, canvas)
        # Its own element ids: the rollback form's boxes have the same names.
        region_form = forms.RegionForm(
            request.GET or None, canvas=canvas, auto_id="id_region_%s"
        )
        region_src = None
        if region_form.is_valid():
            region_src = (
                reverse("admin:canvas_canvas_region_png", args=[canvas.pk])
                + "?"
                + request.GET.urlencode()
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Moderate {canvas.slug}",
            "canvas": canvas,
            "open_form": open_form,
            "cooldown_form": cooldown_form,
            "region_form": region_form,
            "region_src": region_src,
            "scope_form": forms.ScopeForm(initial={"canvas": canvas}),
            "rollback_url": reverse("admin:canvas_moderationaction_rollback"),
            "can_moderate": request.user.has_perm(PERM_CANVAS),
            "can_rollback": request.user.has_perm(PERM_ROLLBACK),
        }
        return TemplateResponse(request, "admin/canvas/canvas_moderate.html", context)

    def _done(self, request, action: ModerationAction, canvas: Canvas):
        _log(self, request, action, f"{action.get_kind_display()} on {canvas.slug}")
        self.message_user(request, f"Done: {action.get_kind_display()}.")
        return redirect("admin:canvas_canvas_moderate", pk=canvas.pk)

    def region_png_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """A region of the canvas as it was at `at`, reconstructed from history."""
        _require(request, "canvas.view_canvas")
        canvas = get_object_or_404(Canvas, pk=pk)
        form = forms.RegionForm(request.GET, canvas=canvas)
        if not form.is_valid():
            errors = [str(e) for errors in form.errors.values() for e in errors]
            return HttpResponse(
                "\n".join(errors), status=400, content_type="text/plain"
            )
        region = form.region()
        at = form.cleaned_data.get("at")
        seq = mod_selectors.seq_at(canvas=canvas, at=at) if at else canvas.seq
        pixels = mod_selectors.region_at_seq(canvas=canvas, region=region, seq=seq)
        png = mod_selectors.region_png(canvas=canvas, region=region, data=pixels)
        return HttpResponse(png, content_type="image/png")


@admin.register(Placement)
class PlacementAdmin(admin.ModelAdmin):
    list_display = [
        "seq",
        "canvas",
        "x",
        "y",
        "color",
        "previous_color",
        "player_link",
        "placed_at",
        "kind",
        "rolled_back",
        "pixel_link",
    ]
    list_filter = [("canvas", CanvasListFilter), "kind", "rolled_back"]
    search_fields = ["player__name"]
    raw_id_fields = ["player"]
    # Newest first by primary key: an index every row has, with no sort on disk.
    ordering = ["-pk"]
    paginator = CappedPaginator
    show_full_result_count = False
    actions = ["rollback_selected"]
    change_list_template = "admin/canvas/placement/change_list.html"
    # The history form's fields: region (inclusive) and time range, as lookups.
    RANGE_FIELDS = [
        ("x__gte", "x from"),
        ("x__lte", "x to"),
        ("y__gte", "y from"),
        ("y__lte", "y to"),
        ("placed_at__gte", "since"),
        ("placed_at__lte", "until"),
    ]

    # The list's parameters a rollback scope can say (or that do not narrow it:
    # search, ordering, page, "show all", facet counts), for _rollback_url.
    SCOPED_PARAMS = {
        "canvas__id__exact",
        "player__id__exact",
        "kind__exact",
        "rolled_back__exact",
        "x",
        "y",
        *(name for name, _ in RANGE_FIELDS),
        "q",
        "o",
        "p",
        "all",
        "_facets",
    }

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history is the record; rollbacks mark it, never delete it

    def has_rollback_permission(self, request) -> bool:
        return request.user.has_perm(PERM_ROLLBACK)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("canvas", "player")

    def get_ordering(self, request) -> list[str]:
        # A time window is read in time order through the (canvas, placed_at)
        # index; newest first by primary key, the database walked back over
        # every newer row to reach the window (1-2.5 s for an hour of day 1).
        if any(key.startswith("placed_at__") for key in request.GET):
            return ["-placed_at", "-pk"]
        return super().get_ordering(request)

    def changelist_view(self, request, extra_context=None):
        original = request.GET
        fields = [
            (name, label, original.get(name, "")) for name, label in self.RANGE_FIELDS
        ]
        # The other filters ride along when the range form is sent again.
        kept = [
            (key, value)
            for key, value in original.items()
            if key not in dict(self.RANGE_FIELDS)
        ]
        request.GET = self._range_cleaned(request)
        extra = {
            "range_fields": fields,
            "kept_params": kept,
            "rollback_url": self._rollback_url(request, original),
        }
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def _rollback_url(self, request, original) -> str | None:
        """The rollback preview of what this list shows, where a scope can say it:
        one canvas; a player, region and time window; no name search."""
        query = request.GET  # parsed: bad bounds are gone
        canvas_id = query.get("canvas__id__exact", "")
        if (
            not request.user.has_perm(PERM_ROLLBACK)
            # Any other lookup (`color__exact`, `seq__gte`, ...) narrows the
            # list in a way no scope can say: the rollback would cover more.
            or not set(original) <= self.SCOPED_PARAMS
            or not canvas_id.isdigit()
            or query.get("q")
            or query.get("kind__exact") == Placement.KIND_MODERATION
            or query.get("rolled_back__exact") == "1"
        ):
            return None
        size = Canvas.objects.filter(pk=canvas_id).values_list("width", "height")
        if not size:
            return None
        ((width, height),) = size
        params = {"canvas": canvas_id}
        player_id = query.get("player__id__exact")
        if player_id is not None:
            # By id: names are not unique, and this list shows one player.
            valid = player_id.isdigit() and len(player_id) < 19
            known = valid and Player.objects.filter(pk=player_id)
            if not known or not known.exists():
                return None
            params["players"] = f"#{player_id}"
        bounds = {
            "x0": query.get("x__gte", query.get("x")),
            "x1": query.get("x__lte", query.get("x")),
            "y0": query.get("y__gte", query.get("y")),
            "y1": query.get("y__lte", query.get("y")),
        }
        if any(value is not None for value in bounds.values()):
            # A missing bound is the canvas's edge, an upper one past it too.
            edges = {"x0": 0, "y0": 0, "x1": width - 1, "y1": height - 1}
            for key, value in bounds.items():
                value = edges[key] if value is None else int(value)
                params[key] = min(value, edges[key]) if key.endswith("1") else value
            # A lower bound past the edge (or past the upper one) lists nothing.
            if params["x0"] > params["x1"] or params["y0"] > params["y1"]:
                return None
        if query.get("placed_at__gte"):
            params["since"] = query["placed_at__gte"]
        if "placed_at__lt" in query or "placed_at__lte" in query:
            params["until"] = original["placed_at__lte"]  # read as the list reads it
        if len(params) == 1:
            return None  # the whole canvas: not offered from a list
        url = reverse("admin:canvas_moderationaction_rollback")
        return url + "?" + urlencode(params)

    def _range_cleaned(self, request):
        query, errors = forms.history_query(request.GET, self.RANGE_FIELDS)
        for error in errors:
            self.message_user(request, error, messages.ERROR)
        return query

    @admin.display(description="player", ordering="player__name")
    def player_link(self, obj: Placement) -> str:
        if obj.player is None:
            return "-"
        url = reverse("admin:canvas_player_change", args=[obj.player_id])
        return format_html('<a href="{}">{}</a>', url, obj.player.name)

    @admin.display(description="pixel history")
    def pixel_link(self, obj: Placement) -> str:
        url = history_url(canvas__id__exact=obj.canvas_id, x=obj.x, y=obj.y)
        return format_html('<a href="{}">({}, {})</a>', url, obj.x, obj.y)

    @admin.action(
        description="Roll back selected placements…", permissions=["rollback"]
    )
    def rollback_selected(self, request, queryset):
        # Neither query keeps the list's ORDER BY: with it, DISTINCT paired
        # every canvas with every id ("Select all": millions of rows, 0.9 s
        # for 1 M), and the ids were read in id order, not by the filter's
        # index. The ids come first: a selection over the limit is refused
        # before its canvases are read at all.
        ids = sorted(
            queryset.order_by().values_list("pk", flat=True)[: SELECTION_MAX + 1]
        )
        if len(ids) > SELECTION_MAX:
            self.message_user(
                request,
                f"That selection is over {SELECTION_MAX:,} placements. Roll back by"
                " player, time window or region instead (filter the history, then"
                " “Roll back what this list shows…”).",
                messages.ERROR,
            )
            return None
        canvases = set(
            queryset.order_by().values_list("canvas_id", flat=True).distinct()
        )
        if len(canvases) != 1:
            self.message_user(
                request, "Select placements of one canvas at a time.", messages.ERROR
            )
            return None
        params = {"canvas": canvases.pop()}
        if len(ids) <= URL_IDS_MAX:
            params["ids"] = ",".join(str(pk) for pk in ids)
        else:
            params["selection"] = forms.selection_store(request.session, ids)
        url = reverse("admin:canvas_moderationaction_rollback")
        return redirect(url + "?" + urlencode(params))


@admin.register(Player)
class PlayerAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "ban", "created_at", "history_link"]
    search_fields = ["name", "user__username"]
    # Read-only: bans go through their own audited pages, and the session key
    # is a live cookie (whoever sees it can place as that player).
    exclude = ["session_key", "banned_until"]  # shown as `ban`, in words
    readonly_fields = [
        "name",
        "user",
        "session",
        "created_at",
        "ban",
        "ban_reason",
        "placements_count",
        "first_placement",
        "last_placement",
        "bans",
        "history_link",
    ]
    change_form_template = "admin/canvas/player/change_form.html"

    def has_add_permission(self, request) -> bool:
        return False  # players come from accounts and sessions

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # bans go through their own audited pages

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # would erase a ban and who made the history, unaudited

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj.summary = mod_selectors.player_summary(player=obj)
        return obj

    @admin.display(description="banned", ordering="banned_until")
    def ban(self, obj: Player) -> str:
        if obj.banned_until is None:
            return "-"
        if not obj.is_banned():
            return f"no (ended {_when(obj.banned_until)})"
        return _ban_end(obj.banned_until)

    @admin.display(description="session")
    def session(self, obj: Player) -> str:
        return "anonymous (a browser session)" if obj.session_key else "-"

    @admin.display(description="placements")
    def placements_count(self, obj: Player) -> int:
        return obj.summary.placements

    @admin.display(description="first placement")
    def first_placement(self, obj: Player):
        return _when(obj.summary.first_placed_at)

    @admin.display(description="last placement")
    def last_placement(self, obj: Player):
        return _when(obj.summary.last_placed_at)

    @admin.display(description="bans")
    def bans(self, obj: Player) -> str:
        if not obj.summary.bans:
            return "-"
        return format_html(
            "<br>".join(["{}"] * len(obj.summary.bans)),
            *[
                f"{_when(a.created_at)} {a.kind} by "
                f"{a.moderator or 'command line'}: {a.reason}"
                for a in obj.summary.bans
            ],
        )

    @admin.display(description="history")
    def history_link(self, obj: Player) -> str:
        return format_html(
            '<a href="{}">placements</a>', history_url(player__id__exact=obj.pk)
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/ban/", view(self.ban_view), name="canvas_player_ban"),
            path("<int:pk>/unban/", view(self.unban_view), name="canvas_player_unban"),
            *super().get_urls(),
        ]

    def ban_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        _require(request, PERM_BAN)
        player = get_object_or_404(Player, pk=pk)
        current = player.banned_until if player.is_banned() else None
        form = forms.BanForm(request.POST or None, current_until=current)
        if request.method == "POST" and form.is_valid():
            try:
                action = moderation.player_ban(
                    player_id=player.pk,
                    reason=form.cleaned_data["reason"],
                    duration=form.duration(),
                    rollback_hours=form.cleaned_data.get("rollback_hours"),
                    moderator_id=request.user.pk,
                )
            except moderation.ModerationError as error:
                form.add_error(None, str(error))
            else:
                _log(self, request, action, f"banned {player.name}")
                # The ban's own rollbacks (one per canvas) go in the log too.
                for rollback in action.rollbacks:
                    message = (
                        f"rolled back {player.name}'s last "
                        f"{form.cleaned_data['rollback_hours']:g} h: "
                        f"{_placements(rollback.placements_count)}"
                    )
                    _log(self, request, rollback, message)
                self.message_user(request, _ban_message(player, action, form))
                return redirect("admin:canvas_player_change", player.pk)
        notice = None
        if current is not None:
            notice = (
                f"{player.name} is banned already, {_ban_end(current)}:"
                f" “{player.ban_reason}”. A new ban replaces it."
            )
        return _form_page(request, self, f"Ban {player.name}", form, "Ban", notice)

    def unban_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        _require(request, PERM_BAN)
        player = get_object_or_404(Player, pk=pk)
        form = forms.ReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                action = moderation.player_unban(
                    player_id=player.pk,
                    reason=form.cleaned_data["reason"],
                    moderator_id=request.user.pk,
                )
            except moderation.ModerationError as error:  # not banned (any more)
                self.message_user(request, str(error), messages.WARNING)
                return redirect("admin:canvas_player_change", player.pk)
            _log(self, request, action, f"unbanned {player.name}")
            # Not starting with the name: admin capitalises a message's first letter.
            self.message_user(request, f"Unbanned {player.name}: they may place again.")
            return redirect("admin:canvas_player_change", player.pk)
        return _form_page(request, self, f"Unban {player.name}", form, "Unban")


def _ban_message(player: Player, ban: ModerationAction, form) -> str:
    """What the ban did, rollbacks included, so the moderator can check or undo.

    Not starting with the name: admin capitalises a message's first letter.
    """
    message = f"Banned {player.name} {_ban_end(parse_datetime(ban.scope['until']))}."
    hours = form.cleaned_data.get("rollback_hours")
    if hours and not ban.rollbacks:
        message += (
            f" Nothing of theirs from the last {hours:g} h was left to roll back."
        )
    for rollback in ban.rollbacks:
        message += (
            f" Rolled back {_placements(rollback.placements_count)} on"
            f" {rollback.canvas.slug}, {_pixels(rollback.pixels_count)} changed"
            f" (rollback #{rollback.pk})."
        )
    return message


def _form_page(
    request, model_admin, title: str, form, submit: str, notice: str | None = None
) -> HttpResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "form": form,
        "submit": submit,
        "notice": notice,
    }
    return TemplateResponse(request, "admin/canvas/moderation_form.html", context)


class NoWrites:
    """An admin in which nobody adds, changes or deletes a row, superusers
    included: its rows are written only by audited actions (or by the
    servers themselves)."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ModerationAction)
class ModerationActionAdmin(NoWrites, admin.ModelAdmin):
    list_display = [
        "created_at",
        "kind",
        "canvas",
        "player",
        "moderator",
        "reason",
        "placements_count",
        "pixels_count",
        "undone_at",
    ]
    list_display_links = ["created_at", "reason"]
    list_filter = ["kind", ("canvas", CanvasListFilter), "created_at"]
    search_fields = ["reason", "player__name", "moderator__username"]
    readonly_fields = ["scope_described"]
    ordering = ["-created_at"]
    paginator = CappedPaginator
    show_full_result_count = False
    change_form_template = "admin/canvas/moderationaction/change_form.html"

    @admin.display(description="scope, in words")
    def scope_described(self, obj: ModerationAction) -> str:
        return scope_in_words(kind=obj.kind, scope=obj.scope or {})

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "rollback/",
                view(self.rollback_view),
                name="canvas_moderationaction_rollback",
            ),
            path(
                "<int:pk>/undo/",
                view(self.undo_view),
                name="canvas_moderationaction_undo",
            ),
            *super().get_urls(),
        ]

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        """Preview a rollback (counts, before and after) and apply it with a reason."""
        _require(request, PERM_ROLLBACK)
        scope_form = forms.ScopeForm(request.GET, session=request.session)
        reason_form = forms.ApplyForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Roll back placements",
            "scope_form": scope_form,
            "reason_form": reason_form,
        }
        if not scope_form.is_valid():
            return TemplateResponse(request, "admin/canvas/rollback.html", context)
        canvas = scope_form.cleaned_data["canvas"]
        scope = scope_form.scope()
        # Pinned to the preview the moderator approved (its hidden upto_seq),
        # also when the page comes back for a missing reason.
        upto_seq = None
        if reason_form.is_bound:
            reason_form.is_valid()  # cleans every field, valid or not
            upto_seq = reason_form.cleaned_data.get("upto_seq")
        try:
            if request.method == "POST" and reason_form.is_valid():
                action = moderation.placements_rollback(
                    canvas_id=canvas.pk,
                    scope=scope,
                    reason=reason_form.cleaned_data["reason"],
                    moderator_id=request.user.pk,
                    upto_seq=upto_seq,
                )
                if action.pk is None:
                    raise moderation.ModerationError(moderation.MSG_NOTHING_LEFT)
                message = (
                    f"{_placements(action.placements_count)} rolled back, "
                    f"{_pixels(action.pixels_count)} changed"
                )
                _log(self, request, action, message)
                self.message_user(request, message)
                return redirect("admin:canvas_moderationaction_change", action.pk)
            preview = moderation.rollback_preview(
                canvas=canvas, scope=scope, upto_seq=upto_seq
            )
        except moderation.ModerationError as error:
            scope_form.add_error(None, str(error))
            return TemplateResponse(request, "admin/canvas/rollback.html", context)
        if not reason_form.is_bound:
            context["reason_form"] = forms.ApplyForm(
                initial={"upto_seq": preview.upto_seq}
            )
        context.update(
            canvas=canvas,
            preview=preview,
            scope_words=scope_in_words(
                kind=ModerationAction.KIND_ROLLBACK, scope=scope.to_json()
            ),
            **_pictures(canvas, preview),
        )
        return TemplateResponse(request, "admin/canvas/rollback.html", context)

    def undo_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        _require(request, PERM_ROLLBACK)
        action = get_object_or_404(ModerationAction, pk=pk)
        form = forms.ReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                undo = moderation.rollback_undo(
                    action_id=action.pk,
                    reason=form.cleaned_data["reason"],
                    moderator_id=request.user.pk,
                )
            except moderation.ModerationError as error:
                form.add_error(None, str(error))
            else:
                message = (
                    f"undid {action}: {_placements(undo.placements_count)} restored, "
                    f"{_pixels(undo.pixels_count)} changed"
                )
                held = moderation.still_covered(action=action)
                if held:
                    message += "; still rolled back by " + _held(held)
                _log(self, request, undo, message)
                self.message_user(request, message)
                return redirect("admin:canvas_moderationaction_change", undo.pk)
        notice = _undo_notice(action)
        return _form_page(request, self, f"Undo {action}", form, "Undo", notice)


def scope_in_words(*, kind: str, scope: dict) -> str:
    """A stored scope with players by name, for the audit trail and previews."""
    parts = []
    if scope.get("player_ids"):
        players = Player.objects.filter(pk__in=scope["player_ids"])
        shared = mod_selectors.names_shared(names=[p.name for p in players])
        # A name another player also has gets its id, to tell them apart.
        labels = [
            f"{p.name} (#{p.pk})" if p.name in shared else p.name for p in players
        ]
        parts.append("players " + ", ".join(sorted(labels)))
    if scope.get("placement_ids"):
        parts.append(f"{_placements(len(scope['placement_ids']))} chosen")
    if scope.get("region"):
        x0, y0, x1, y1 = scope["region"]
        parts.append(f"region ({x0}, {y0}) to ({x1}, {y1}) inclusive")
    if kind == ModerationAction.KIND_BAN:
        until = parse_datetime(scope.get("until") or "")
        forever = until is None or until >= moderation.BAN_FOREVER
        parts.append("for good" if forever else f"until {_when(until)}")
        if scope.get("rollback_hours"):
            parts.append(f"their last {scope['rollback_hours']:g} h rolled back")
    else:
        for key in ("since", "until"):
            if scope.get(key):
                parts.append(f"{key} {_when(parse_datetime(scope[key]))}")
    if scope.get("undo_of"):
        parts.append(f"undid rollback #{scope['undo_of']}")
    if kind == ModerationAction.KIND_COOLDOWN:
        parts.append(f"cooldown {scope.get('from')} s → {scope['to']} s")
    return "; ".join(parts) or "-"


def _undo_notice(action: ModerationAction) -> str:
    """What undoing `action` would restore, and what would still hold some of it."""
    if action.kind != ModerationAction.KIND_ROLLBACK:
        return moderation.MSG_NOT_ROLLBACK
    if action.is_undone:
        return f"{moderation.MSG_ALREADY_UNDONE[:-1]} ({_when(action.undone_at)})."
    notice = (
        f"Rollback #{action.pk} on {action.canvas.slug}, by"
        f" {action.moderator or 'command line'} at {_when(action.created_at)}"
        f" (“{action.reason}”): {scope_in_words(kind=action.kind, scope=action.scope)}."
        f" It rolled back {_placements(action.placements_count)} and changed"
        f" {_pixels(action.pixels_count)}."
    )
    holds = moderation.placements_held(action=action)
    if holds != action.placements_count:
        notice += (
            f" It holds {_placements(holds)} now (an undone rollback hands on"
            " those another rollback's scope covers)."
        )
    notice += " Undoing shows them again wherever nothing newer does."
    held = moderation.still_covered(action=action)
    if held:
        notice += (
            f" Still rolled back afterwards, until these are undone too: {_held(held)}."
        )
    return notice


def _pictures(canvas: Canvas, preview: moderation.RollbackPreview) -> dict:
    """Before and after PNGs of the preview's bounds, as data URIs."""
    if preview.bounds is None:
        return {}
    region = preview.bounds
    x0, y0, x1, y1 = region
    if (x1 - x0 + 1) * (y1 - y0 + 1) > PREVIEW_MAX_PIXELS:
        return {}
    before = mod_selectors.board_region(canvas=canvas, region=region)
    after = mod_selectors.region_with_changes(
        region=region, data=before, changes=preview.changes
    )
    scale = max(1, min(16, 480 // max(x1 - x0 + 1, y1 - y0 + 1)))
    return {
        "before_png": _png_data_uri(
            mod_selectors.region_png(canvas=canvas, region=region, data=before)
        ),
        "after_png": _png_data_uri(
            mod_selectors.region_png(canvas=canvas, region=region, data=after)
        ),
        "picture_width": (x1 - x0 + 1) * scale,
        "generated_at": timezone.now(),
    }


class ViewOnlyAdmin(NoWrites, admin.ModelAdmin):
    """Rows anyone with access may look at, and nobody writes here, superusers
    included: an edit here would reach no audit trail and no live socket.

    `notice()` says so at the top of the list and of each row's page, and
    where the audited way to get the same result is.
    """

    change_list_template = "admin/canvas/view_only_change_list.html"
    change_form_template = "admin/canvas/view_only_change_form.html"

    def notice(self) -> str:
        return ""

    def changelist_view(self, request, extra_context=None):
        extra = {**(extra_context or {}), "notice": self.notice()}
        return super().changelist_view(request, extra)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = {**(extra_context or {}), "notice": self.notice()}
        return super().changeform_view(request, object_id, form_url, extra)


@admin.register(Cooldown)
class CooldownAdmin(ViewOnlyAdmin):
    list_display = ["player", "canvas", "next_at"]
    search_fields = ["player__name"]

    def notice(self) -> str:
        # No per-player cooldown action exists; these two are the audited ones.
        return format_html(
            "Read-only: a change here would be recorded nowhere. To change a"
            " canvas's cooldown for everyone (running cooldowns longer than the"
            " new one are shortened to it), use <em>moderate</em> beside it in"
            ' <a href="{}">Canvases</a>; to stop a player placing, ban them from'
            ' their page in <a href="{}">Players</a>. Both are recorded under'
            " Moderation actions.",
            reverse("admin:canvas_canvas_changelist"),
            reverse("admin:canvas_player_changelist"),
        )


@admin.register(Connection)
class ConnectionAdmin(ViewOnlyAdmin):
    list_display = [
        "channel_name",
        "canvas",
        "player",
        "server",
        "ip",
        "connected_at",
        "last_seen",
    ]
    list_filter = [("canvas", CanvasListFilter), "server"]

    def notice(self) -> str:
        # A row is the servers' record of an open socket: deleting it would
        # close nothing, only hide the socket from the per-address limit.
        return format_html(
            "Read-only: the servers' own record of open sockets (deleting a row"
            " would close nothing). To stop a player, ban them from their page"
            ' in <a href="{}">Players</a>; to stop everyone, pause the canvas'
            ' with <em>moderate</em> beside it in <a href="{}">Canvases</a>.'
            " Both are recorded under Moderation actions.",
            reverse("admin:canvas_player_changelist"),
            reverse("admin:canvas_canvas_changelist"),
        )


def _ban_end(until) -> str:
    """A ban's end in words: "for good" rather than the year 9999."""
    if until is None:
        return "-"
    return "for good" if until >= moderation.BAN_FOREVER else f"until {_when(until)}"


def _when(moment) -> str:
    """A time as the admin's lists show it (to the second, UTC), or "-"."""
    return date_format(moment, "DATETIME_FORMAT") if moment else "-"
