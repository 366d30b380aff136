"""WebSocket URL routes."""

from django.urls import path

from .consumers import CanvasConsumer

websocket_urlpatterns = [
    path("ws/canvases/<slug:slug>/", CanvasConsumer.as_asgi()),
]
