"""Forms for the moderation pages in admin; they parse input, services decide."""

import secrets
from datetime import UTC, timedelta

from django import forms
from django.http import QueryDict
from django.utils import timezone

from . import services
from .models import Canvas
from .moderation import (
    BAN_FOREVER,
    MAX_HOURS,
    MAX_HOURS_DELTA,
    ModerationError,
    Scope,
    region_check,
    region_message,
    until_lookup,
)
from .moderation_selectors import PlayerLookupError, players_resolve

# Placement ids are PostgreSQL bigints; anything larger cannot name one.
MAX_ID = 2**63 - 1

REASON_HELP = "Kept with the action and shown in the moderation log."
# Selections too long for a URL (thousands of ids) wait in the session; the
# newest few are kept, so several previews may be open at once.
SELECTIONS_KEY = "canvas_rollback_selections"
SELECTIONS_KEPT = 3
MSG_SELECTION_GONE = (
    "That selection is no longer available; select the placements again."
)
MSG_REGION_PARTIAL = "Give all four region bounds, or none."
REGION_FIELDS = ("x0", "y0", "x1", "y1")


def region_bound(**kwargs) -> forms.IntegerField:
    """A region's bound, checked with the whole region against the canvas.

    No min_value: a negative bound gets region_check's error, which names the
    canvas's bounds, rather than "greater than or equal to 0" alone. The
    browser is still told 0 is the least.
    """
    return forms.IntegerField(widget=forms.NumberInput(attrs={"min": 0}), **kwargs)


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, help_text=REASON_HELP)


class OpenForm(ReasonForm):
    """Pause or resume, saying which: a form sent twice must not undo itself."""

    is_open = forms.TypedChoiceField(
        choices=[("0", "pause"), ("1", "resume")],
        coerce=lambda value: value == "1",
        widget=forms.HiddenInput,
    )


class ApplyForm(ReasonForm):
    """The reason, and the newest seq the preview covered: apply exactly that.

    A post without it (a page from before it existed) is applied up to now.
    """

    upto_seq = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_ID, widget=forms.HiddenInput
    )


def selection_store(session, ids: list[int]) -> str:
    """Keep a selection of placement ids in the session; return its token."""
    kept = list(session.get(SELECTIONS_KEY, {}).items())[-(SELECTIONS_KEPT - 1) :]
    token = secrets.token_urlsafe(9)
    session[SELECTIONS_KEY] = {**dict(kept), token: ids}
    return token


class ScopeForm(forms.Form):
    """A rollback scope from a query string, so a preview can be linked and shared."""

    canvas = forms.ModelChoiceField(queryset=Canvas.objects.all())
    ids = forms.CharField(required=False, help_text="placement ids, comma-separated")
    players = forms.CharField(
        required=False,
        help_text="player names or #ids, separated by spaces or commas",
    )
    # A selection kept in the session (selection_store), for thousands of ids.
    selection = forms.CharField(required=False, widget=forms.HiddenInput)
    since = forms.DateTimeField(required=False, help_text="inclusive, UTC")
    until = forms.DateTimeField(required=False, help_text="inclusive, UTC")
    x0 = region_bound(required=False)
    y0 = region_bound(required=False)
    x1 = region_bound(required=False)
    y1 = region_bound(required=False)

    def __init__(self, *args, session=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session = session if session is not None else {}

    def clean_selection(self) -> tuple[int, ...]:
        token = self.cleaned_data["selection"]
        if not token:
            return ()
        ids = self.session.get(SELECTIONS_KEY, {}).get(token)
        if ids is None:
            raise forms.ValidationError(MSG_SELECTION_GONE)
        return tuple(ids)

    def clean_ids(self) -> tuple[int, ...]:
        raw = self.cleaned_data["ids"].replace(",", " ").split()
        if not all(
            part.isascii() and part.isdigit() and int(part) <= MAX_ID for part in raw
        ):
            raise forms.ValidationError(
                f"Placement ids are whole numbers up to {MAX_ID}."
            )
        return tuple(int(part) for part in raw)

    def clean_since(self):
        return _utc(self.cleaned_data["since"])

    def clean_until(self):
        return _utc(self.cleaned_data["until"])

    def clean_players(self) -> tuple[int, ...]:
        tokens = self.cleaned_data["players"].replace(",", " ").split()
        try:
            return players_resolve(tokens=tokens)
        except PlayerLookupError as error:
            raise forms.ValidationError(str(error)) from None

    def clean(self) -> dict:
        data = super().clean()
        # A bound that was given but refused has its own error already.
        given = [
            name
            for name in REGION_FIELDS
            if data.get(name) is not None or self.has_error(name)
        ]
        if given and len(given) < len(REGION_FIELDS):
            raise forms.ValidationError(MSG_REGION_PARTIAL)
        _bounds_named(self, data.get("canvas"))
        return data

    def scope(self) -> Scope:
        data = self.cleaned_data
        corners = tuple(data.get(name) for name in REGION_FIELDS)
        return Scope(
            placement_ids=tuple(sorted({*data["ids"], *data["selection"]})),
            player_ids=data["players"],
            since=data.get("since"),
            until=data.get("until"),
            region=corners if None not in corners else None,
        )


def _bounds_named(form: forms.Form, canvas: Canvas | None) -> None:
    """Beside a bound that is not a number ("Enter a whole number."), say
    which numbers this canvas takes, as a bound outside it is told."""
    if canvas is not None and any(
        form.has_error(name, code="invalid") for name in REGION_FIELDS
    ):
        form.add_error(None, region_message(canvas=canvas))


def _utc(moment):
    """The time in UTC, or a form error for one that has no UTC (year 1, +05:00)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise forms.ValidationError("That time is out of range.") from None


class BanForm(ReasonForm):
    hours = forms.FloatField(
        required=False,
        min_value=0.01,
        max_value=MAX_HOURS,
        help_text="leave this and “until” empty to ban for good",
    )
    until = forms.DateTimeField(
        required=False, help_text="or: the ban's end, UTC (instead of hours)"
    )
    rollback_hours = forms.FloatField(
        required=False,
        min_value=0.01,
        max_value=MAX_HOURS,
        help_text="also roll back their placements of the last N hours",
    )
    # Shown only while the player is banned: a new ban replaces the current one.
    shorten = forms.BooleanField(
        required=False,
        label="Shorten the current ban",
        help_text="needed when this ban ends before the one in force",
    )

    def __init__(self, *args, current_until=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current_until = current_until
        if current_until is None:
            del self.fields["shorten"]

    def clean_until(self):
        until = _utc(self.cleaned_data["until"])
        if until is not None and until <= timezone.now():
            raise forms.ValidationError("The end of a ban must lie in the future.")
        if until is not None and until - timezone.now() > MAX_HOURS_DELTA:
            raise forms.ValidationError("A ban ends within a century, or never.")
        return until

    def clean(self) -> dict:
        data = super().clean()
        if data.get("hours") and data.get("until"):
            raise forms.ValidationError("Give hours or an end time, not both.")
        if (
            self.current_until is not None
            and not self.errors
            and self.ends() < self.current_until
            and not data.get("shorten")
        ):
            raise forms.ValidationError(MSG_BAN_SHORTER)
        return data

    def ends(self):
        """When the ban asked for would end (BAN_FOREVER: never)."""
        duration = self.duration()
        return timezone.now() + duration if duration else BAN_FOREVER

    def duration(self) -> timedelta | None:
        hours, until = self.cleaned_data.get("hours"), self.cleaned_data.get("until")
        if until:
            return until - timezone.now()
        return timedelta(hours=hours) if hours else None


MSG_BAN_SHORTER = (
    "This ban would end before the one in force (above); tick “Shorten the"
    " current ban” to replace it with the shorter one."
)


class CooldownForm(ReasonForm):
    cooldown_seconds = forms.IntegerField(min_value=0, max_value=services.MAX_COOLDOWN)


class RegionForm(forms.Form):
    """A region of a canvas at an instant, for a picture reconstructed from history.

    Bounds are checked as the rollback's are: inclusive, inside the canvas.
    """

    x0 = region_bound()
    y0 = region_bound()
    x1 = region_bound()
    y1 = region_bound()
    at = forms.DateTimeField(required=False, help_text="UTC; empty: now")

    def __init__(self, *args, canvas: Canvas, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.canvas = canvas

    def clean_at(self):
        return _utc(self.cleaned_data["at"])

    def clean(self) -> dict:
        data = super().clean()
        corners = [data.get(name) for name in REGION_FIELDS]
        if None not in corners:
            try:
                region_check(canvas=self.canvas, region=tuple(corners))
            except ModerationError as error:
                raise forms.ValidationError(str(error)) from None
        _bounds_named(self, self.canvas)
        return data

    def region(self) -> tuple[int, int, int, int]:
        data = self.cleaned_data
        return (data["x0"], data["y0"], data["x1"], data["y1"])


MSG_BAD_TIME = (
    "“{label}” must be a time such as 2026-11-27 10:02:24 (UTC);"
    " “{raw}” is not, so that bound is not applied."
)
MSG_BAD_NUMBER = (
    "“{label}” must be a whole number from 0;"
    " “{raw}” is not, so that bound is not applied."
)
# The pixel-history links' exact coordinates, checked like the range boxes.
EXACT_FIELDS = [("x", "x"), ("y", "y")]


def history_query(
    query: QueryDict, fields: list[tuple[str, str]]
) -> tuple[QueryDict, list[str]]:
    """The history's query with its bounds parsed, and an error for each bad one.

    Django's changelist answers any bad lookup value by showing the whole
    history (`?e=1`); here an empty box is dropped and a value that is not
    understood is named and left out, so the list never looks filtered when
    it is not. `until` is inclusive at the precision given (until_lookup).
    """
    query = query.copy()
    errors = []
    for name, label in [*fields, *EXACT_FIELDS]:
        raw = query.get(name, "").strip()
        if not raw:
            query.pop(name, None)
            continue
        is_time = name.startswith("placed_at")
        field = (
            forms.DateTimeField()
            if is_time
            else forms.IntegerField(min_value=0, max_value=10**6)
        )
        try:
            value = field.clean(raw)
            if is_time:
                value = _utc(value)
        except forms.ValidationError:
            query.pop(name)
            message = MSG_BAD_TIME if is_time else MSG_BAD_NUMBER
            errors.append(message.format(label=label, raw=raw))
            continue
        if name == "placed_at__lte":
            query.pop(name)
            lookup, moment = until_lookup(value)
            query[lookup] = moment.isoformat()
        else:
            query[name] = value.isoformat() if is_time else str(value)
    return query, errors
