"""HTTP: player pages, the canvas API and the account pages."""

import gzip
import io
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.utils.html import escape
from PIL import Image

from canvas import services, views
from canvas.models import Player


@pytest.fixture
def canvas(make_canvas):
    return make_canvas(slug="test", width=40, height=30, cooldown=0)


def place(canvas, x, y, color, name="bob"):
    player, _ = Player.objects.get_or_create(name=name)
    return services.placement_create(
        canvas_id=canvas.pk, player_id=player.pk, x=x, y=y, color=color
    )


def test_canvas_meta_matches_the_contract(client, canvas):
    place(canvas, 1, 1, 3)
    body = client.get("/api/canvases/test/").json()
    assert body == {
        "slug": "test",
        "title": "test",
        "width": 40,
        "height": 30,
        "palette": canvas.palette,
        "cooldown_seconds": 0,
        "open": True,
        "seq": 1,
    }


@pytest.mark.parametrize(
    "url",
    [
        "/api/canvases/nope/",
        "/api/canvases/nope/board",
        "/api/canvases/nope/board.png",
        "/api/canvases/nope/pixels/1/1",
    ],
)
def test_unknown_canvas_is_a_json_404(client, db, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "nope" in response.json()["error"]


def test_board_bytes_follow_placements_with_seq_and_etag(client, canvas):
    place(canvas, 5, 7, 12)
    response = client.get("/api/canvases/test/board")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Canvas-Seq"] == "1"
    data = response.content
    assert len(data) == 40 * 30 and data[7 * 40 + 5] == 12 and data.count(0) == 1199
    etag = response["ETag"]
    cached = client.get("/api/canvases/test/board", headers={"if-none-match": etag})
    assert cached.status_code == 304 and cached.content == b""
    place(canvas, 6, 7, 2)
    fresh = client.get("/api/canvases/test/board", headers={"if-none-match": etag})
    assert fresh.status_code == 200 and fresh["X-Canvas-Seq"] == "2"
    assert fresh["ETag"] != etag and fresh.content[7 * 40 + 6] == 2


def test_board_is_gzipped_for_clients_that_accept_it(client, make_canvas):
    canvas = make_canvas(slug="big", width=1000, height=1000)
    place(canvas, 999, 999, 5)
    plain = client.get("/api/canvases/big/board")
    assert "Content-Encoding" not in plain and len(plain.content) == 1000 * 1000
    zipped = client.get(
        "/api/canvases/big/board", headers={"accept-encoding": "gzip, deflate, br"}
    )
    assert zipped["Content-Encoding"] == "gzip"
    assert zipped["Vary"] == plain["Vary"] == "Accept-Encoding"
    assert zipped["X-Canvas-Seq"] == plain["X-Canvas-Seq"] == "1"
    assert len(zipped.content) < 10_000  # a megabyte of one colour, nearly
    assert gzip.decompress(zipped.content) == plain.content
    # Same board, either encoding's tag: 304 both ways.
    assert zipped["ETag"] == f"W/{plain['ETag']}"
    for tag, encoding in [(zipped["ETag"], "identity"), (plain["ETag"], "gzip")]:
        again = client.get(
            "/api/canvases/big/board",
            headers={"if-none-match": tag, "accept-encoding": encoding},
        )
        assert again.status_code == 304


@pytest.mark.parametrize(
    "header, gzipped",
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("x-gzip", True),
        ("", False),
        ("identity", False),
        ("gzip;q=0, identity", False),
        ("GZIP; Q=0.0", False),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
    ],
)
def test_gzip_only_where_accept_encoding_allows_it(header, gzipped):
    assert views.accepts_gzip(header) is gzipped


def test_board_png_shows_the_palette_colours(client, canvas):
    place(canvas, 2, 3, 5)  # red
    response = client.get("/api/canvases/test/board.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert image.size == (40, 30)
    assert image.getpixel((2, 3)) == (0xE5, 0x00, 0x00)
    assert image.getpixel((0, 0)) == (0xFF, 0xFF, 0xFF)


def test_board_png_follows_a_palette_change_with_a_new_etag(client, canvas):
    """A moderator recolours red in the admin: no pixel changes, the PNG does."""
    place(canvas, 2, 3, 5)
    before = client.get("/api/canvases/test/board.png")
    canvas.palette = [*canvas.palette[:5], "#00ff00", *canvas.palette[6:]]
    canvas.save()
    after = client.get(
        "/api/canvases/test/board.png", headers={"if-none-match": before["ETag"]}
    )
    assert after.status_code == 200 and after["ETag"] != before["ETag"]
    image = Image.open(io.BytesIO(after.content)).convert("RGB")
    assert image.getpixel((2, 3)) == (0x00, 0xFF, 0x00)


def test_pixel_info_names_who_placed_it_and_when(client, canvas):
    place(canvas, 4, 4, 9, name="carol")
    body = client.get("/api/canvases/test/pixels/4/4").json()
    assert body["x"] == 4 and body["y"] == 4 and body["color"] == 9
    assert body["placed_by"] == "carol" and body["placed_at"].startswith("20")
    empty = client.get("/api/canvases/test/pixels/0/0").json()
    assert empty == {"x": 0, "y": 0, "color": 0, "placed_by": None, "placed_at": None}


@pytest.mark.parametrize("x, y", [(40, 0), (0, 30), (-1, 0), (0, -5)])
def test_pixel_outside_the_canvas_is_404(client, canvas, x, y):
    response = client.get(f"/api/canvases/test/pixels/{x}/{y}")
    assert response.status_code == 404 and "error" in response.json()


def test_player_page_has_the_contract_hooks(client, canvas):
    response = client.get("/c/test/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-role="board"' in html and 'data-role="cooldown"' in html
    for index in range(16):
        assert f'data-color="{index}"' in html
    assert 'aria-label="red"' in html


def test_home_is_canvas_main(client, make_canvas):
    make_canvas(slug="main", width=10, height=10)
    response = client.get("/")
    assert response.status_code == 200 and b'"slug": "main"' in response.content


def test_unknown_canvas_page_is_404(client, db):
    assert client.get("/c/nope/").status_code == 404


def test_anonymous_play_sets_a_session_cookie(client, canvas, settings):
    settings.PLACE_REQUIRE_LOGIN = False
    response = client.get("/c/test/")
    assert "sessionid" in response.cookies


def test_login_required_mode_sets_no_cookie_and_invites_to_join(client, canvas):
    response = client.get("/c/test/")
    assert "sessionid" not in response.cookies
    assert b"Sign up" in response.content and b"to place pixels" in response.content


def test_signup_creates_an_account_and_logs_in(client, canvas):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "dave",
            "password1": "a-long-pass-123",
            "password2": "a-long-pass-123",
        },
    )
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="dave").exists()
    assert client.get("/c/test/").context["user"].username == "dave"


def test_signup_refuses_names_kept_for_anonymous_players(client, db):
    from canvas.account_forms import MSG_ANON_USERNAME

    response = client.post(
        "/accounts/signup/", {"username": "Anon-88605a", "password": "a-long-pass-123"}
    )
    assert response.status_code == 200
    assert MSG_ANON_USERNAME in response.content.decode()
    assert not get_user_model().objects.exists()


def test_signup_with_mismatched_passwords_shows_the_error(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "erin",
            "password1": "a-long-pass-123",
            "password2": "other-pass-456",
        },
    )
    assert response.status_code == 200
    assert b"didn" in response.content  # "The two password fields didn't match."
    assert not get_user_model().objects.filter(username="erin").exists()


@pytest.mark.parametrize("field", ["password", "password1"])
def test_signup_needs_only_username_and_password(client, canvas, field):
    response = client.post(
        "/accounts/signup/", {"username": "gina", field: "a-long-pass-123"}
    )
    assert response.status_code == 302
    assert client.get("/c/test/").context["user"].username == "gina"
    client.logout()
    login = {"username": "gina", "password": "a-long-pass-123"}
    assert client.post("/accounts/login/", login).status_code == 302


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "a-long-pass-123", "password2": "other-pass-456"},
        {"password": "a-long-pass-123", "password1": "other-pass-456"},
    ],
)
def test_signup_confirmation_when_given_must_match(client, db, fields):
    response = client.post("/accounts/signup/", {"username": "hal", **fields})
    assert response.status_code == 200 and b"didn" in response.content
    assert not get_user_model().objects.filter(username="hal").exists()


@pytest.mark.parametrize("password", ["", "short", "password123"])
def test_signup_still_applies_the_password_validators(client, db, password):
    response = client.post(
        "/accounts/signup/", {"username": "ivy", "password": password}
    )
    assert response.status_code == 200
    assert not get_user_model().objects.filter(username="ivy").exists()


def test_signup_page_does_not_require_the_confirmation(client, db):
    html = client.get("/accounts/signup/").content.decode()
    confirmation = html[html.index('name="password2"') :].split(">", 1)[0]
    assert "required" not in confirmation


def test_signup_forms_with_errors_are_limited_like_log_ins(client, db, settings):
    settings.PLACE_LOGIN_LIMIT = 3
    taken = {"username": "x", "password": "a-long-pass-123", "password2": "y"}
    for _ in range(3):
        assert client.post("/accounts/signup/", taken).status_code == 200
    assert client.post("/accounts/signup/", taken).status_code == 429


def test_signup_rate_limit_counts_accounts_made_not_typos(client, db, settings):
    settings.PLACE_SIGNUP_LIMIT = 1
    for _ in range(3):
        typo = {"username": "jo", "password": "a-long-pass-123", "password2": "x"}
        assert client.post("/accounts/signup/", typo).status_code == 200
    first = {"username": "jo", "password": "a-long-pass-123"}
    assert client.post("/accounts/signup/", first).status_code == 302
    second = {"username": "kim", "password": "a-long-pass-123"}
    assert client.post("/accounts/signup/", second).status_code == 429
    assert not get_user_model().objects.filter(username="kim").exists()


def test_login_and_logout(client, canvas):
    get_user_model().objects.create_user("frank", password="a-long-pass-123")
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "frank", "password": "a-long-pass-123"}
    )
    assert response.status_code == 302
    assert client.get("/accounts/logout/").status_code == 200  # asks to confirm
    assert client.post("/accounts/logout/").status_code == 302
    assert not client.get("/c/test/").context["user"].is_authenticated


def test_a_wrong_password_is_explained_once(client, canvas):
    get_user_model().objects.create_user("frank", password="a-long-pass-123")
    response = client.post("/accounts/login/", {"username": "frank", "password": "no"})
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count('role="alert"') == 1
    assert "Please enter a correct username" not in page
    assert 'name="username"' in page and 'name="password"' in page


def test_while_the_database_is_away_the_api_says_503_in_json_and_pages_say_why(
    client, canvas, monkeypatch
):
    from django.db import OperationalError

    def unreachable(**kwargs):
        raise OperationalError("couldn't get a connection after 5.00 sec")

    monkeypatch.setattr(views.selectors, "canvas_get", unreachable)
    api = client.get("/api/canvases/test/")
    assert api.status_code == 503 and api["Retry-After"] == "5"
    assert api.json() == {"error": "The database is unavailable; try again shortly."}
    page = client.get("/c/test/")
    assert page.status_code == 503 and page["Retry-After"] == "5"
    assert "unavailable for a moment" in page.content.decode()


def test_signing_up_and_logging_in_work_while_redis_is_down(client, canvas, settings):
    """The attempt counters live in the shared cache; without it, players
    still get in (counted per process), not an error page."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    form = {"username": "hal", "password1": "a-long-pass-123"}
    signed_up = client.post(
        "/accounts/signup/", form | {"password2": form["password1"]}
    )
    assert signed_up.status_code == 302
    client.post("/accounts/logout/")
    login = {"username": "hal", "password": "a-long-pass-123"}
    assert client.post("/accounts/login/", login).status_code == 302


def test_account_pages_return_to_the_view_they_came_from(client, canvas):
    """Sign-up with a typo, log in from sign-up, log out: the same view after."""
    view = "/c/test/?x=12&y=34&z=5"
    form = client.get("/accounts/signup/", {"next": view})
    assert f"/accounts/login/?next={quote(view, safe='/')}" in form.content.decode()
    form = {"username": "gina", "password1": "a-long-pass-123", "next": view}
    typo = client.post("/accounts/signup/", form | {"password2": "x"})
    assert typo.status_code == 200 and typo.context["next"] == view
    assert f'name="next" value="{escape(view)}"' in typo.content.decode()
    fixed = client.post("/accounts/signup/", form | {"password2": "a-long-pass-123"})
    assert fixed.status_code == 302 and fixed["Location"] == view
    page = client.get(view).content.decode()
    assert f"/accounts/logout/?next={quote(view, safe='/')}" in page
    confirm = client.get("/accounts/logout/", {"next": view})
    assert f'name="next" value="{escape(view)}"' in confirm.content.decode()
    out = client.post("/accounts/logout/", {"next": view})
    assert out.status_code == 302 and out["Location"] == view
    assert not client.get(view).context["user"].is_authenticated


def test_a_throttled_sign_up_still_returns_to_the_view(client, db, settings):
    settings.PLACE_LOGIN_LIMIT = 1
    view = "/c/test/?x=1&y=2&z=3"
    form = {"username": "ivy", "password1": "a", "password2": "b", "next": view}
    client.post("/accounts/signup/", form)
    throttled = client.post("/accounts/signup/", form)
    assert throttled.status_code == 429
    assert f'name="next" value="{escape(view)}"' in throttled.content.decode()


def test_an_https_site_never_returns_to_plain_http(client, canvas):
    user = get_user_model().objects.create_user("jo", password="a-long-pass-123")
    client.force_login(user)
    out = client.post(
        "/accounts/logout/", {"next": "http://testserver/c/test/"}, secure=True
    )
    assert out["Location"] == "/"


def test_only_the_board_page_turns_off_the_browsers_zoom(client, canvas):
    """Account pages stay zoomable for people who need larger text."""
    assert b"user-scalable=no" in client.get("/c/test/").content
    for page in ["/accounts/signup/", "/accounts/login/", "/accounts/logout/"]:
        html = client.get(page).content
        assert b'name="viewport"' in html and b"user-scalable=no" not in html


def test_account_pages_never_return_to_another_site(client, canvas):
    user = get_user_model().objects.create_user("hal", password="a-long-pass-123")
    client.force_login(user)
    out = client.post("/accounts/logout/", {"next": "https://evil.example/"})
    assert out["Location"] == "/"
    form = client.get("/accounts/signup/", {"next": "//evil.example/"})
    assert form.context["next"] == "/"


def test_forms_need_csrf(canvas):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/accounts/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403


def test_resize_and_back_changes_the_board_etag_and_clears_bytes(client, canvas):
    place(canvas, 35, 25, 12)
    before = client.get("/api/canvases/test/board")
    png_before = client.get("/api/canvases/test/board.png")
    assert before.content[25 * 40 + 35] == 12
    services.canvas_create_or_update(slug="test", width=20, height=20)
    services.canvas_create_or_update(slug="test", width=40, height=30)
    etag = {"if-none-match": before["ETag"]}
    after = client.get("/api/canvases/test/board", headers=etag)
    assert after.status_code == 200 and after["ETag"] != before["ETag"]
    assert after["X-Canvas-Seq"] == "1" and after.content == bytes(40 * 30)
    png_etag = {"if-none-match": png_before["ETag"]}
    png = client.get("/api/canvases/test/board.png", headers=png_etag)
    assert png.status_code == 200
    image = Image.open(io.BytesIO(png.content)).convert("RGB")
    assert image.getpixel((35, 25)) == (0xFF, 0xFF, 0xFF)


def test_pixel_cleared_by_a_shrink_names_no_placer(client, canvas):
    place(canvas, 35, 25, 12, name="carol")
    place(canvas, 2, 3, 4, name="carol")
    services.canvas_create_or_update(slug="test", width=20, height=30)
    services.canvas_create_or_update(slug="test", width=40, height=30)
    cleared = client.get("/api/canvases/test/pixels/35/25").json()
    assert cleared == {
        "x": 35,
        "y": 25,
        "color": 0,
        "placed_by": None,
        "placed_at": None,
    }
    kept = client.get("/api/canvases/test/pixels/2/3").json()
    assert kept["color"] == 4 and kept["placed_by"] == "carol"
    # A later shrink that spares the pixel brings back no wiped placement.
    services.canvas_create_or_update(slug="test", width=39, height=30)
    assert client.get("/api/canvases/test/pixels/35/25").json()["placed_by"] is None
    place(canvas, 35, 25, 7, name="dave")
    again = client.get("/api/canvases/test/pixels/35/25").json()
    assert again["color"] == 7 and again["placed_by"] == "dave"


def _board_at(seq: int, changes: list[tuple[int, int, int, int]]) -> bytes:
    """A 16×16 board after the changes (seq, x, y, color) up to `seq`."""
    board = bytearray(16 * 16)
    for at, x, y, color in sorted(changes):
        if at <= seq:
            board[y * 16 + x] = color
    return bytes(board)


@pytest.mark.django_db(transaction=True)
def test_board_bytes_match_their_seq_while_placements_commit(client, make_canvas):
    """Other threads commit placements; every board fetched meanwhile shows
    exactly the changes up to its X-Canvas-Seq, no more and no fewer."""
    import threading
    import time

    from django.db import connections

    canvas = make_canvas(slug="race", width=16, height=16, cooldown=0)
    stop = threading.Event()
    changes: list[tuple[int, int, int, int]] = []

    def place_many(thread: int) -> None:
        player = Player.objects.create(name=f"racer{thread}")
        try:
            for k in range(100_000):
                if stop.is_set():
                    break
                x, y, color = (k * 7 + thread) % 16, k % 16, 1 + (k + thread) % 15
                seq = services.placement_create(
                    canvas_id=canvas.pk, player_id=player.pk, x=x, y=y, color=color
                ).seq
                changes.append((seq, x, y, color))
                time.sleep(0.0005)  # paced like ingest's window, not a busy loop
        finally:
            connections.close_all()

    placers = [threading.Thread(target=place_many, args=(t,)) for t in range(4)]
    for placer in placers:
        placer.start()
    fetched = []
    try:
        # For 2 s, and on until the board has moved under the reads (a busy
        # machine commits fewer a second: 2 s once saw only 10 seqs); 30 s at most.
        start = time.monotonic()

        def reading() -> bool:
            moved = len({seq for seq, _ in fetched}) > 10
            elapsed = time.monotonic() - start
            return elapsed < 2 or (not moved and elapsed < 30)

        while reading():
            response = client.get("/api/canvases/race/board")
            fetched.append((int(response["X-Canvas-Seq"]), response.content))
    finally:
        stop.set()
        for placer in placers:
            placer.join(30)
    wrong = [seq for seq, data in fetched if data != _board_at(seq, changes)]
    assert wrong == []
    assert len({seq for seq, _ in fetched}) > 10  # the board moved while read


@pytest.mark.parametrize(
    "x, y", [("1.5", "0"), ("a", "0"), ("0", "1e3"), ("+1", "0"), ("1_0", "0")]
)
def test_pixel_with_a_non_integer_coordinate_is_a_json_404(client, canvas, x, y):
    response = client.get(f"/api/canvases/test/pixels/{x}/{y}")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == views.MSG_BAD_COORDINATES


@pytest.mark.parametrize(
    "url",
    [
        "/api/",
        "/api/nothing",
        "/api/canvases/",
        "/api/canvases/test/board.gif",
        "/api/canvases/test/pixels/1",
        "/api/canvases/a.b/",
        "/api/v2/canvases/test/",
    ],
)
def test_unknown_api_paths_are_json_404s(canvas, url):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    for response in (client.get(url), client.post(url)):
        assert response.status_code == 404
        assert response.json() == {"error": views.MSG_NO_ENDPOINT}


def test_api_path_missing_its_slash_still_redirects(client, canvas):
    response = client.get("/api/canvases/test?x=1")
    assert response.status_code == 301
    assert response["Location"] == "/api/canvases/test/?x=1"


@pytest.mark.parametrize("path", ["board", "board.png"])
@pytest.mark.parametrize(
    "if_none_match",
    ["*", "W/{etag}", '"other", {etag}', 'W/"other",W/{etag}', " {etag} "],
)
def test_if_none_match_forms_give_304(client, canvas, path, if_none_match):
    url = f"/api/canvases/test/{path}"
    etag = client.get(url)["ETag"]
    header = if_none_match.format(etag=etag)
    response = client.get(url, headers={"if-none-match": header})
    assert response.status_code == 304 and response.content == b""
    assert response["ETag"] == etag
    assert "Content-Type" not in response


@pytest.mark.parametrize("path", ["board", "board.png"])
def test_if_none_match_without_the_current_etag_gives_200(client, canvas, path):
    url = f"/api/canvases/test/{path}"
    etag = client.get(url)["ETag"]
    place(canvas, 1, 1, 3)
    for header in [etag, f"W/{etag}", f'"x", {etag}', "garbage"]:
        response = client.get(url, headers={"if-none-match": header})
        assert response.status_code == 200 and response.content


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("", "application/json"),
        ("board", "application/octet-stream"),
        ("board.png", "image/png"),
        ("pixels/1/1", "application/json"),
    ],
)
def test_head_answers_with_headers_and_no_body(client, canvas, path, content_type):
    place(canvas, 1, 1, 3)
    response = client.head(f"/api/canvases/test/{path}")
    assert response.status_code == 200 and response.content == b""
    assert response["Content-Type"] == content_type
    if path.startswith("board"):
        assert response["ETag"] == client.get(f"/api/canvases/test/{path}")["ETag"]
    if path == "board":
        assert response["X-Canvas-Seq"] == "1"


@pytest.mark.parametrize("path", ["", "board", "board.png", "pixels/1/1"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_api_reads_refuse_other_methods_with_a_json_405(canvas, path, method):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)  # as a script without a token
    response = getattr(client, method)(f"/api/canvases/test/{path}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "not allowed" in response.json()["error"]
