"""Top-level URLs: the game, accounts and the admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("canvas.account_urls")),
    path("", include("canvas.urls")),
]
