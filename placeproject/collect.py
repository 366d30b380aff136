"""Static files for a server started with debug off and nothing collected yet.

The contract says `daphne placeproject.asgi:application` alone runs the whole
product. With debug off, pages name hashed static files from collectstatic's
manifest; without it every page would fail. So a process that finds no
manifest, or one older than a source file (an upgrade that nobody collected),
collects them (once: a file lock makes the others wait, then find it fresh).
A deploy that runs collectstatic itself skips all of this. Failing to collect
(a read-only STATIC_ROOT, say) is logged, never fatal: the API and WebSockets
do not need static files.
"""

import fcntl
import logging
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command

log = logging.getLogger("canvas.startup")
MANIFEST = "staticfiles.json"


def collect_if_missing() -> None:
    if settings.DEBUG:
        return
    root = Path(settings.STATIC_ROOT)
    if _fresh(root / MANIFEST):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".collecting.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _fresh(root / MANIFEST):  # another process collected meanwhile
                return
            log.warning(
                "static files in %s missing or older than their sources: "
                "collecting them now (run `manage.py collectstatic` when "
                "deploying to skip this)",
                root,
            )
            call_command("collectstatic", interactive=False, verbosity=0)
    except Exception:
        log.exception("could not collect static files into %s; pages may fail", root)


def _fresh(manifest: Path) -> bool:
    """The manifest exists and no source static file is newer than it."""
    try:
        collected = manifest.stat().st_mtime
    except OSError:
        return False
    return all(mtime <= collected for mtime in _source_mtimes())


def _source_mtimes():
    for finder in get_finders():
        for path, storage in finder.list([]):
            try:
                yield Path(storage.path(path)).stat().st_mtime
            except (OSError, NotImplementedError):
                continue
