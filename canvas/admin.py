"""Django admin for moderators: a first look at every model."""

from django.contrib import admin

from .models import Canvas, Connection, Cooldown, Placement, Player


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
    ]
    readonly_fields = ["seq", "created_at", "width", "height"]
    search_fields = ["slug", "title"]


@admin.register(Placement)
class PlacementAdmin(admin.ModelAdmin):
    list_display = [
        "seq",
        "canvas",
        "x",
        "y",
        "color",
        "previous_color",
        "player",
        "placed_at",
        "kind",
        "rolled_back",
    ]
    list_filter = ["canvas", "kind", "rolled_back"]
    search_fields = ["player__name"]
    raw_id_fields = ["player"]
    ordering = ["-placed_at"]
    # History tables grow to millions of rows; avoid a full COUNT per page.
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Player)
class PlayerAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "banned_until", "created_at"]
    search_fields = ["name", "user__username"]
    raw_id_fields = ["user"]


@admin.register(Cooldown)
class CooldownAdmin(admin.ModelAdmin):
    list_display = ["player", "canvas", "next_at"]
    search_fields = ["player__name"]
    raw_id_fields = ["player"]


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    list_display = [
        "channel_name",
        "canvas",
        "player",
        "server",
        "ip",
        "connected_at",
        "last_seen",
    ]
    list_filter = ["canvas", "server"]
    raw_id_fields = ["player"]
