"""Production settings: `check --deploy` clean, secrets required, admin for staff."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PLACE_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_deploy_check_reports_no_issues_with_debug_off():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="false",
        DJANGO_HTTPS="true",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="place.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_debug_off_without_a_secret_key_refuses_to_start():
    result = manage("check", DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_secret_key_comes_from_the_environment():
    key = secrets.token_urlsafe(50)
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=key,
    )
    assert result.stdout.strip().splitlines()[-1] == key


@pytest.mark.parametrize("staff", [False, True])
def test_admin_is_only_for_staff(client, db, staff):
    user = get_user_model().objects.create_user(
        "u", password="pw-123456!", is_staff=staff
    )
    assert client.get("/admin/").status_code == 302  # anonymous: to the login page
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == (200 if staff else 302)


@pytest.mark.parametrize(
    ("proxies", "expected"), [("", 301), ("127.0.0.1", 200)], ids=["client", "proxy"]
)
def test_forwarded_proto_is_believed_only_from_trusted_proxies(
    client, db, settings, proxies, expected
):
    """Behind TLS (SSL redirect on), a client cannot claim HTTPS by header."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.PLACE_TRUSTED_PROXIES = [proxies] if proxies else []
    response = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == expected
    if expected == 301:
        assert response["Location"].startswith("https://")


def test_behind_a_trusted_proxy_its_https_header_counts_without_django_https():
    """Deployments from before DJANGO_HTTPS (debug off, a proxy) keep CSRF working."""
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        PLACE_TRUSTED_PROXIES="127.0.0.1",
    )
    assert result.stdout.strip().splitlines()[-1] == (
        "('HTTP_X_FORWARDED_PROTO', 'https')"
    ), result.stderr
