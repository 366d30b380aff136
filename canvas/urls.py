"""The player pages and the JSON/binary API."""

from django.urls import path, re_path

from . import metrics, views

app_name = "canvas"

urlpatterns = [
    path("", views.play, {"slug": "main"}, name="home"),
    path("c/<slug:slug>/", views.play, name="play"),
    path("api/canvases/<slug:slug>/", views.canvas_meta, name="api-canvas"),
    path("api/canvases/<slug:slug>/board", views.board, name="api-board"),
    path("api/canvases/<slug:slug>/board.png", views.board_png, name="api-board-png"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Any segment: the view answers a bad coordinate with the API's JSON 404.
    re_path(
        r"^api/canvases/(?P<slug>[-\w]+)/pixels/(?P<x>[^/]+)/(?P<y>[^/]+)$",
        views.pixel,
        name="api-pixel",
    ),
    # Last: nothing under /api/ answers with an HTML page.
    re_path(r"^api/(?P<path>.*)$", views.api_not_found, name="api-not-found"),
]
