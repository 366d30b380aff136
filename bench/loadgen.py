"""The load generator: worker processes, each one event loop with many sockets.

A job with "engine": "c" runs bench/wsload.c, a single-threaded epoll client in
C, as the worker's child (`build_wsload` compiles it); otherwise the worker is
the asyncio client below, the reference the C engine follows: a lean WebSocket
client on asyncio.Protocol (no per-message library overhead). Watchers check
every `pixels` frame for gaps with byte searches, and one in `sample` also
decodes it to time each change from its scheduled placement. Each worker
reports its own CPU time, so the report shows whether the load generator, not
the server, was the limit.
"""

import asyncio
import base64
import json
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

PIXELS = b'{"type":"pixels"'
HELLO = b'{"type":"hello"'
SOURCE = Path(__file__).resolve().parent / "wsload.c"
WSLOAD = Path(__file__).resolve().parent / ".build" / "wsload"  # git-ignored
# Handshakes a worker keeps in flight (a job's "inflight"): daphne drops a
# handshake that outlives its timeout, so a steady load does not queue past it;
# the connect scenario raises it to open a storm.
HANDSHAKES_IN_FLIGHT = 25


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Socket(asyncio.Protocol):
    """One WebSocket: handshake, unmasked server frames in, masked frames out."""

    def __init__(self, path: str, host: str, cookie: str | None, on_message):
        self.path, self.host, self.cookie = path, host, cookie
        self.on_message = on_message
        self.buffer = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport = None
        self.handshaken = False
        self.close_code: int | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: http://{self.host}",
        ]
        if self.cookie:
            lines.append(f"Cookie: sessionid={self.cookie}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:12])
            del buffer[: end + 4]
            if b" 101" not in status:
                self.fail(ConnectionError(status.decode(errors="replace")))
                return
            self.handshaken = True
            self.open.set_result(None)
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            start = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                start = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                start = 10
            if len(buffer) < start + length:
                return
            opcode = buffer[0] & 0x0F
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 1:
                self.on_message(payload)
            elif opcode == 9:  # daphne's keepalive ping: answer as browsers do
                self.send_frame(0x8A, payload)
            elif opcode == 8:
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                self.transport.close()

    def send_text(self, text: str) -> None:
        self.send_frame(0x81, text.encode())

    def send_frame(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = (
            bytes([first, 0x80 | n]) if n < 126 else struct.pack("!BBH", first, 254, n)
        )
        masked = (
            int.from_bytes(payload, "big")
            ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        ).to_bytes(n, "big")
        self.transport.write(header + mask + masked)

    def fail(self, error: Exception) -> None:
        if not self.open.done():
            self.open.set_exception(error)
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)


async def connect(host: str, port: int, path: str, cookie: str | None, on_message):
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: Socket(path, f"{host}:{port}", cookie, on_message), host, port
    )
    sock = proto.transport.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.wait_for(proto.open, 60)
    return proto


class Watcher:
    """Counts the changes a socket receives and checks their seqs follow on."""

    def __init__(self, sampled: bool, schedule: tuple | None):
        self.last = None
        self.received = 0
        self.frames = 0
        self.gaps = 0
        self.repeats = 0
        self.sampled = sampled
        self.schedule = schedule  # (t0, rate, width)
        self.latencies: list[float] = []
        self.hello_seq = None

    def __call__(self, payload: bytes) -> None:
        if payload.startswith(PIXELS):
            self.pixels(payload)
        elif payload.startswith(HELLO):
            self.hello_seq = self.last = json.loads(payload)["seq"]

    def pixels(self, payload: bytes) -> None:
        now = time.time()
        start = payload.index(b"[[") + 2
        first = int(payload[start : payload.index(b",", start)])
        tail = payload.rindex(b"[") + 1
        last = int(payload[tail : payload.index(b",", tail)])
        count = payload.count(b"],[") + 1
        if self.last is not None:
            if first > self.last + 1:
                self.gaps += 1
            elif first <= self.last:
                self.repeats += 1
        if last - first + 1 != count:
            self.gaps += 1
        self.last = last
        self.received += count
        self.frames += 1
        if self.sampled and self.schedule:
            t0, rate, width = self.schedule
            for _, x, y, _ in json.loads(payload)["updates"]:
                self.latencies.append(now - (t0 + (y * width + x) / rate))


async def _open_many(
    host, port, path, count, make_handler, cookies=None, inflight=HANDSHAKES_IN_FLIGHT
):
    sem = asyncio.Semaphore(inflight)
    sockets, handlers, failures = [], [], 0

    async def one(i):
        nonlocal failures
        handler = make_handler(i)
        async with sem:
            try:
                cookie = cookies[i] if cookies else None
                sock = await connect(host, port, path, cookie, handler)
            except Exception:
                failures += 1
                return
        sockets.append(sock)
        handlers.append(handler)

    await asyncio.gather(*(one(i) for i in range(count)))
    return sockets, handlers, failures


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def compiler() -> str | None:
    """The C compiler to build bench/wsload.c with ($CC or cc), if there is one."""
    return shutil.which(os.environ.get("CC", "cc"))


def build_wsload() -> Path:
    """Compile bench/wsload.c into bench/.build/wsload unless it is up to date."""
    if WSLOAD.exists() and WSLOAD.stat().st_mtime >= SOURCE.stat().st_mtime:
        return WSLOAD
    WSLOAD.parent.mkdir(exist_ok=True)
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc or $CC) to build bench/wsload.c")
    subprocess.run([cc, "-O2", "-o", str(WSLOAD), str(SOURCE)], check=True)
    return WSLOAD


# The load processes' scheduling policy (bench/run.py --loadgen-sched). On
# loopback every frame the server writes wakes the load process that reads it,
# and under the default policy that wake-up preempts the server in the middle
# of its frame: some 1,200 preemptions per 2,500-socket frame, measured, where
# real browsers on other machines cost the server none. SCHED_BATCH keeps the
# load processes' CPU and their place in the queue but lets no wake-up of
# theirs preempt the server (bench/RESULTS.md, fan-out, 2026-11-28).
SCHED = "batch"


def _policy() -> str:
    """The scheduling policy this load process ran under, as measured."""
    try:
        batch = os.sched_getscheduler(0) == os.SCHED_BATCH
    except (AttributeError, OSError):
        return "unknown"
    return "batch" if batch else "normal"


def run_worker(job: dict, ready, go, results) -> None:
    """Entry point of a worker process: `job` says which role and how much."""
    raise_fd_limit()
    if SCHED == "batch":  # inherited by bench/wsload.c's child process
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, OSError) as error:  # not Linux, or not allowed
            print(f"load process left under the default policy: {error}")
    if job.get("engine") == "c":
        report = _c_worker(job, ready, go)
    else:
        report = asyncio.run(_worker(job, ready, go))
    report["port"] = job.get("port")  # whose server it loaded
    report["sched"] = _policy()
    results.put(report)


def _c_worker(job: dict, ready, go) -> dict:
    """The same worker, its sockets driven by bench/wsload.c in a child process.

    The job goes in as flags and the cookies one a line on stdin; the child
    answers `READY <sockets> <failures>` once every socket has been tried, gets
    `GO <t0>` and ends with its report, one JSON line with the keys `_worker`
    returns. This thin parent's own CPU from go to the end is added to it.
    """
    role = job["role"]
    cookies = job.get("cookies") or []
    argv = [str(WSLOAD), "--role", role, "--host", job["host"]]
    argv += ["--port", str(job["port"]), "--path", job["path"]]
    if role == "watch":
        argv += ["--count", str(job["count"]), "--sample", str(job.get("sample", 0))]
        argv += ["--rate", repr(float(job.get("rate") or 1))]
        argv += ["--width", str(job.get("width", 1000))]
        argv += ["--drain", repr(float(job["drain"]))]
    else:
        argv += ["--cookies", str(len(cookies)), "--width", str(job["width"])]
        argv += ["--height", str(job["height"])]
        if role == "place":
            argv += ["--rate", repr(float(job["rate"])), "--stride", str(job["stride"])]
            argv += ["--offset", str(job["offset"])]
    argv += ["--seconds", repr(float(job["seconds"]))]
    argv += ["--inflight", str(job.get("inflight", HANDSHAKES_IN_FLIGHT))]
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child.stdin.write("".join(f"{cookie}\n" for cookie in cookies))
    child.stdin.flush()
    line = child.stdout.readline().split()
    if len(line) != 3 or line[0] != "READY":
        child.kill()
        raise RuntimeError(f"wsload did not open its sockets (exit {child.wait()})")
    ready.put((role, int(line[1]), int(line[2])))
    t0 = go.get()
    cpu_start = cpu_seconds()
    child.stdin.write(f"GO {t0!r}\n")
    child.stdin.close()
    out = child.stdout.read()
    if child.wait() != 0 or not out.strip():
        raise RuntimeError(f"wsload failed (exit {child.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    report["cpu"] += cpu_seconds() - cpu_start
    return report


async def _worker(job: dict, ready, go) -> dict:
    role = job["role"]
    loop = asyncio.get_running_loop()
    cpu0 = cpu_seconds()
    schedule = None
    if role == "watch":
        sample = job.get("sample", 0)
        sockets, handlers, failures = await _open_many(
            job["host"],
            job["port"],
            job["path"],
            job["count"],
            lambda i: Watcher(bool(sample) and i % sample == 0, None),
            inflight=job.get("inflight", HANDSHAKES_IN_FLIGHT),
        )
    else:
        sockets, handlers, failures = await _open_many(
            job["host"],
            job["port"],
            job["path"],
            len(job["cookies"]),
            lambda i: Replies(),
            cookies=job["cookies"],
            inflight=job.get("inflight", HANDSHAKES_IN_FLIGHT),
        )
    ready.put((role, len(sockets), failures))
    t0 = await loop.run_in_executor(None, go.get)
    cpu_start = cpu_seconds()
    if role == "watch":
        schedule = (t0, job.get("rate") or 1, job.get("width", 1000))
        for handler in handlers:
            handler.schedule = schedule
        await asyncio.sleep(max(0.0, t0 + job["seconds"] + job["drain"] - time.time()))
    elif role == "place":
        await _place_on_schedule(job, sockets, handlers, t0)
    elif role == "ingest":
        await _ingest_closed_loop(job, sockets, handlers, t0)
    cpu_used = cpu_seconds() - cpu_start
    for sock in sockets:
        sock.transport.close()
    report = {
        "role": role,
        "sockets": len(sockets),
        "failures": failures,
        "cpu": cpu_used,
        "cpu_connect": cpu_start - cpu0,
        "closed_by_server": sum(1 for s in sockets if s.close_code),
    }
    if role == "watch":
        report.update(
            received=[h.received for h in handlers],
            hello=[h.hello_seq or 0 for h in handlers],
            frames=sum(h.frames for h in handlers),
            gaps=sum(h.gaps for h in handlers),
            repeats=sum(h.repeats for h in handlers),
            latencies=[x for h in handlers for x in h.latencies],
        )
    else:
        report.update(
            accepted=sum(h.accepted for h in handlers),
            rejected=sum(h.rejected for h in handlers),
            codes=_merge(h.codes for h in handlers),
            max_seq=max((h.max_seq for h in handlers), default=0),
            late=max((h.late for h in handlers), default=0.0),
            unsent=sum(h.unsent for h in handlers),
            window=job["seconds"],
        )
    return report


def _merge(dicts) -> dict:
    merged: dict = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = merged.get(k, 0) + v
    return merged


class Replies:
    """A player socket: counts its placements' answers and wakes its sender."""

    def __init__(self):
        self.accepted = self.rejected = self.max_seq = 0
        self.codes: dict = {}
        self.waiter: asyncio.Future | None = None
        self.late = 0.0
        self.unsent = 0

    def __call__(self, payload: bytes) -> None:
        if payload.startswith(PIXELS):
            return
        if payload.startswith(b'{"type":"accepted"'):
            self.accepted += 1
            self.max_seq = max(self.max_seq, json.loads(payload)["seq"])
        elif payload.startswith(b'{"type":"rejected"'):
            self.rejected += 1
            code = json.loads(payload)["code"]
            self.codes[code] = self.codes.get(code, 0) + 1
        else:
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def answer(self, timeout: float = 30) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.waiter, timeout)


async def _place_on_schedule(job, sockets, handlers, t0) -> None:
    """Placement i goes out at t0 + i/rate on pixel (i % width, i // width)."""
    rate, width, seconds = job["rate"], job["width"], job["seconds"]
    stride, offset = job["stride"], job["offset"]
    total = int(rate * seconds)
    mine = list(range(offset, total, stride))
    per_socket = [mine[k :: len(sockets)] for k in range(len(sockets))]

    stop = t0 + seconds + 5.0  # placements this late are not sent at all

    async def run(k):
        sock, handler = sockets[k], handlers[k]
        for i in per_socket[k]:
            if time.time() > stop:
                handler.unsent += 1
                continue
            delay = t0 + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                handler.late = max(handler.late, -delay)
            x, y = i % width, (i // width) % job["height"]
            sock.send_text(f'{{"type":"place","x":{x},"y":{y},"color":{i % 15 + 1}}}')
            try:
                await handler.answer(max(0.1, stop - time.time()))
            except TimeoutError:
                return

    await asyncio.gather(*(run(k) for k in range(len(sockets))))


async def _ingest_closed_loop(job, sockets, handlers, t0) -> None:
    """Every player places again as soon as its last placement is answered."""
    end = t0 + job["seconds"]
    width, height = job["width"], job["height"]

    async def run(k):
        sock, handler = sockets[k], handlers[k]
        rng = random.Random(k)
        while time.time() < end:
            x, y, c = rng.randrange(width), rng.randrange(height), rng.randrange(16)
            sock.send_text(f'{{"type":"place","x":{x},"y":{y},"color":{c}}}')
            try:
                await handler.answer()
            except TimeoutError:
                return

    await asyncio.sleep(max(0.0, t0 - time.time()))
    await asyncio.gather(*(run(k) for k in range(len(sockets))))
