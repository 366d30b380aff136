"""Canvases, their boards, the history of every change, players and live sockets."""

from django.conf import settings
from django.db import models
from django.utils import timezone

# The r/place 2017 palette, in its original order.
PALETTE_2017 = [
    "#ffffff",
    "#e4e4e4",
    "#888888",
    "#222222",
    "#ffa7d1",
    "#e50000",
    "#e59500",
    "#a06a42",
    "#e5d900",
    "#94e044",
    "#02be01",
    "#00d3dd",
    "#0083c7",
    "#0000ea",
    "#cf6ee4",
    "#820080",
]
PALETTE_2017_NAMES = [
    "white",
    "light grey",
    "grey",
    "black",
    "pink",
    "red",
    "orange",
    "brown",
    "yellow",
    "light green",
    "green",
    "cyan",
    "blue",
    "dark blue",
    "magenta",
    "purple",
]
# The board is stored in square chunks so one placement rewrites a few KB, not
# the whole board, and a snapshot reads a few hundred rows, not a million.
CHUNK_SIZE = 64


class Canvas(models.Model):
    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    palette = models.JSONField(default=list)
    cooldown_seconds = models.PositiveIntegerField(default=300)
    is_open = models.BooleanField(default=True)
    # Seq of the newest change; every change takes the next one, in its transaction.
    seq = models.BigIntegerField(default=0)
    # Bumped by every change of width or height, which rewrites the board without
    # a seq: board ETags and cache keys carry it, so no two boards share one.
    epoch = models.PositiveIntegerField(default=0, editable=False)
    # [seq, width, height] of every resize that cleared pixels: the canvas seq
    # then and the new size. A placement with a seq at or below one of them, at
    # a pixel outside that size, was wiped by it (see pixel_info).
    shrinks = models.JSONField(default=list, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "canvases"

    def __str__(self) -> str:
        return self.slug

    @property
    def chunks_x(self) -> int:
        return -(-self.width // CHUNK_SIZE)

    @property
    def chunks_y(self) -> int:
        return -(-self.height // CHUNK_SIZE)

    def cleared_since(self, *, x: int, y: int, seq: int) -> bool:
        """Whether a resize wiped pixel (x, y) after the change with this seq."""
        return any(
            seq <= at and (x >= width or y >= height)
            for at, width, height in self.shrinks
        )


class Chunk(models.Model):
    """A CHUNK_SIZE square of the board; one byte per pixel, a palette index."""

    canvas = models.ForeignKey(Canvas, on_delete=models.CASCADE, related_name="chunks")
    cx = models.PositiveIntegerField()
    cy = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["canvas", "cx", "cy"], name="chunk_unique")
        ]

    def __str__(self) -> str:
        return f"{self.canvas_id}:{self.cx},{self.cy}"


class Player(models.Model):
    """Who places: a Django user, or an anonymous session when that is allowed."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="player",
    )
    session_key = models.CharField(max_length=64, null=True, blank=True, unique=True)
    name = models.CharField(max_length=150, db_index=True)
    banned_until = models.DateTimeField(null=True, blank=True)
    ban_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name

    def is_banned(self, now=None) -> bool:
        return self.banned_until is not None and self.banned_until > (
            now or timezone.now()
        )


class Cooldown(models.Model):
    """When a player may next place on a canvas; updated conditionally, atomically."""

    canvas = models.ForeignKey(Canvas, on_delete=models.CASCADE)
    player = models.ForeignKey(Player, on_delete=models.CASCADE)
    next_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["canvas", "player"], name="cooldown_unique")
        ]

    def __str__(self) -> str:
        return f"{self.player_id} on {self.canvas_id} until {self.next_at}"


class Placement(models.Model):
    """One change of one pixel, with its seq: a player's placement or moderation."""

    KIND_PLACE = "place"
    KIND_MODERATION = "moderation"
    KIND_CHOICES = [(KIND_PLACE, "placement"), (KIND_MODERATION, "moderation")]

    # No single-column indexes on canvas and player: the composite indexes
    # below lead with them, and every index is one more write per placement
    # and per placement a rollback marks.
    canvas = models.ForeignKey(Canvas, on_delete=models.CASCADE, db_index=False)
    seq = models.BigIntegerField()
    x = models.PositiveIntegerField()
    y = models.PositiveIntegerField()
    color = models.PositiveSmallIntegerField()
    previous_color = models.PositiveSmallIntegerField()
    player = models.ForeignKey(
        Player, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    placed_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=12, choices=KIND_CHOICES, default=KIND_PLACE)
    rolled_back = models.BooleanField(default=False)
    # The active rollback that keeps this placement rolled back (canvas/moderation.py).
    # Deliberately in no index, nor is rolled_back: then marking a placement
    # rolled back can be a HOT update (no index writes), which made rollbacks
    # several times faster. Undo finds a rollback's placements through its
    # scope, which always covers them.
    rolled_back_by = models.ForeignKey(
        "ModerationAction",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["canvas", "seq"], name="placement_seq")
        ]
        indexes = [
            models.Index(fields=["canvas", "x", "y", "seq"], name="placement_pixel"),
            models.Index(fields=["player", "placed_at"], name="placement_player"),
            models.Index(fields=["canvas", "placed_at"], name="placement_time"),
            # Moderation's own changes, a sliver of the history: the admin's
            # kind filter read the whole table without it. Partial, so a
            # player's placement writes nothing to it.
            models.Index(
                fields=["canvas", "id"],
                name="placement_moderation",
                condition=models.Q(kind="moderation"),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} ({self.x},{self.y})={self.color}"


class Connection(models.Model):
    """One open WebSocket; removed on disconnect or when its process dies."""

    channel_name = models.CharField(max_length=200, unique=True)
    canvas = models.ForeignKey(Canvas, on_delete=models.CASCADE)
    player = models.ForeignKey(Player, null=True, blank=True, on_delete=models.SET_NULL)
    server = models.CharField(max_length=200, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    connected_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [
            # Every handshake counts its address's open sockets
            # (PLACE_MAX_CONNECTIONS_PER_IP): without it, a scan of every row.
            models.Index(fields=["ip", "last_seen"], name="connection_ip_seen"),
        ]

    def __str__(self) -> str:
        return self.channel_name


class IpQuota(models.Model):
    """Placements from one address in the current window (PLACE_IP_LIMIT)."""

    canvas = models.ForeignKey(Canvas, on_delete=models.CASCADE)
    ip = models.GenericIPAddressField()
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["canvas", "ip"], name="ipquota_unique")
        ]

    def __str__(self) -> str:
        return f"{self.ip} on {self.canvas_id}: {self.count}"


class ModerationAction(models.Model):
    """One thing a moderator did: who, when, why, what it touched, what it changed."""

    KIND_ROLLBACK = "rollback"
    KIND_UNDO = "undo"
    KIND_BAN = "ban"
    KIND_UNBAN = "unban"
    KIND_PAUSE = "pause"
    KIND_RESUME = "resume"
    KIND_COOLDOWN = "cooldown"
    KIND_CHOICES = [
        (KIND_ROLLBACK, "rollback"),
        (KIND_UNDO, "undo of a rollback"),
        (KIND_BAN, "ban"),
        (KIND_UNBAN, "unban"),
        (KIND_PAUSE, "pause canvas"),
        (KIND_RESUME, "resume canvas"),
        (KIND_COOLDOWN, "change cooldown"),
    ]

    kind = models.CharField(max_length=12, choices=KIND_CHOICES)
    canvas = models.ForeignKey(Canvas, null=True, blank=True, on_delete=models.CASCADE)
    player = models.ForeignKey(Player, null=True, blank=True, on_delete=models.SET_NULL)
    # Null when done from the command line.
    moderator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    reason = models.CharField(max_length=500)
    scope = models.JSONField(default=dict, blank=True)
    placements_count = models.PositiveIntegerField(default=0)
    pixels_count = models.PositiveIntegerField(default=0)
    # The consecutive seqs of the pixel changes this action made, if any.
    seq_from = models.BigIntegerField(null=True, blank=True)
    seq_to = models.BigIntegerField(null=True, blank=True)
    undo_of = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="undone_by",
    )
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["canvas", "kind", "undone_at"], name="moderation_active"
            )
        ]
        permissions = [
            ("rollback_placements", "Can roll back placements and undo rollbacks"),
            ("ban_player", "Can ban and unban players"),
            ("moderate_canvas", "Can pause, resume and set the cooldown of canvases"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_undone(self) -> bool:
        return self.undone_at is not None
