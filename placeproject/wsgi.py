"""WSGI entry point (HTTP only; the game needs ASGI for WebSockets)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
application = get_wsgi_application()
