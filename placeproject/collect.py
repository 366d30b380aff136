"""Static files for a server started with debug off and nothing collected yet.

The contract says `daphne placeproject.asgi:application` alone runs the whole
product. With debug off, pages name hashed static files from collectstatic's
manifest; without it every page would fail. So the first process to start
collects them (once: a file lock makes the others wait for it, then find the
manifest), and a deploy that runs collectstatic itself skips all of this.
"""

import fcntl
import logging
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

log = logging.getLogger("canvas.startup")
MANIFEST = "staticfiles.json"


def collect_if_missing() -> None:
    if settings.DEBUG:
        return
    root = Path(settings.STATIC_ROOT)
    if (root / MANIFEST).exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".collecting.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / MANIFEST).exists():  # another process collected meanwhile
            return
        log.warning(
            "no collected static files in %s: collecting them now "
            "(run `manage.py collectstatic` when deploying to skip this)",
            root,
        )
        call_command("collectstatic", interactive=False, verbosity=0)
