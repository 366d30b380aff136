"""Start-up collection of static files when debug is off (placeproject/collect.py)."""

import os

import pytest

from placeproject.collect import MANIFEST, collect_if_missing


@pytest.fixture
def production(settings):
    """Debug off, with the hashed-names storage the settings choose then."""
    settings.DEBUG = False
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"
        },
    }
    return settings


def test_collects_when_missing_or_stale_and_leaves_a_fresh_one_alone(
    production, tmp_path
):
    settings = production
    settings.STATIC_ROOT = tmp_path / "static"
    collect_if_missing()
    manifest = settings.STATIC_ROOT / MANIFEST
    assert manifest.exists()
    assert list((settings.STATIC_ROOT / "canvas").glob("place.*.js"))

    fresh = manifest.stat().st_mtime
    collect_if_missing()
    assert manifest.stat().st_mtime == fresh  # nothing newer: not collected again

    os.utime(manifest, (0, 0))  # as if collected before an upgrade
    collect_if_missing()
    assert manifest.stat().st_mtime > 0


def test_an_unwritable_static_root_does_not_stop_the_server(production, tmp_path):
    settings = production
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.STATIC_ROOT = blocker / "static"  # cannot be made: its parent is a file
    collect_if_missing()  # logs, does not raise
    assert not (blocker / "static").exists()
