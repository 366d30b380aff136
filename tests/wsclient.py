"""A minimal real WebSocket player for tests against live servers."""

import asyncio
import json
import urllib.request

import websockets


def anonymous_cookie(base_url: str) -> str:
    """GET / as a browser would and return the session cookie it sets."""
    with urllib.request.urlopen(base_url + "/", timeout=10) as response:
        cookie = response.headers.get("Set-Cookie", "")
    return cookie.split(";")[0]


class Player:
    def __init__(self, ws_base: str, slug: str = "main", cookie: str | None = None):
        self.url = f"{ws_base}/ws/canvases/{slug}/"
        self.origin = ws_base.replace("ws://", "http://")
        self.cookie = cookie
        self.socket = None
        self.hello: dict = {}

    async def __aenter__(self) -> "Player":
        headers = {"Origin": self.origin}
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.socket = await websockets.connect(
            self.url, additional_headers=headers, open_timeout=10, max_size=None
        )
        self.hello = await self.next("hello")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.socket.close()

    async def send(self, message: dict) -> None:
        await self.socket.send(json.dumps(message))

    async def next(self, *kinds: str, timeout: float = 10) -> dict:
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
            if message["type"] in kinds:
                return message

    async def place(self, x: int, y: int, color: int) -> dict:
        await self.send({"type": "place", "x": x, "y": y, "color": color})
        return await self.next("accepted", "rejected")
