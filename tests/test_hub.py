"""The per-process hub: ordering by seq, batching, refilling lost changes."""

import asyncio
import json
import time

import pytest

from canvas import broadcast, services
from canvas.hub import CLOSE_TOO_SLOW, Hub, registry
from canvas.models import Player

from .conftest import adb, connect, receive_type

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_layer"),
]


class Recorder:
    def __init__(self) -> None:
        self.frames: list[dict] = []

    async def deliver(self, frame: str) -> None:
        self.frames.append(json.loads(frame))

    async def canvas_updated(self) -> None:
        pass


class Slow(Recorder):
    """A socket behind an ASGI send that takes its time."""

    async def deliver(self, frame: str) -> None:
        await asyncio.sleep(0.05)
        await super().deliver(frame)


async def test_out_of_order_changes_are_released_in_seq_order(make_canvas):
    canvas = await adb(make_canvas)(slug="order")
    hub = Hub(canvas.pk)
    hub.last_seq = 10
    recorder = Recorder()
    hub.join(recorder)
    hub.accept([[13, 0, 0, 1], [11, 0, 0, 1], [9, 0, 0, 1]])
    await hub.flush()
    assert recorder.frames == [{"type": "pixels", "updates": [[11, 0, 0, 1]]}]
    hub.accept([[12, 1, 1, 2], [11, 0, 0, 1]])
    await hub.flush()
    assert recorder.frames[-1]["updates"] == [[12, 1, 1, 2], [13, 0, 0, 1]]
    assert hub.last_seq == 13


async def test_many_changes_in_one_tick_go_out_as_one_frame(make_canvas):
    canvas = await adb(make_canvas)(slug="batch")
    hub = Hub(canvas.pk)
    recorder = Recorder()
    hub.join(recorder)
    hub.accept([[seq, seq % 32, 0, 3] for seq in range(1, 501)])
    await hub.flush()
    assert len(recorder.frames) == 1 and len(recorder.frames[0]["updates"]) == 500


async def test_changes_lost_by_the_layer_are_refilled_from_the_database(
    make_canvas, anonymous_play, monkeypatch
):
    """A process that commits but never publishes (it died, Redis was down)."""
    anonymous_play.PLACE_GAP_TIMEOUT = 0.2
    canvas = await adb(make_canvas)(slug="lossy", cooldown=0)
    watcher, hello = await connect("lossy")
    player = await adb(Player.objects.create)(name="ghost")
    monkeypatch.setattr(broadcast, "publish", lambda **kwargs: None)
    for i in range(3):
        await adb(services.placement_create)(
            canvas_id=canvas.pk, player_id=player.pk, x=i, y=0, color=6
        )
    frame = await receive_type(watcher, "pixels", timeout=5)
    seqs = [u[0] for u in frame["updates"]]
    while len(seqs) < 3:
        seqs += [u[0] for u in (await receive_type(watcher, "pixels"))["updates"]]
    assert seqs == [hello["seq"] + 1, hello["seq"] + 2, hello["seq"] + 3]
    await watcher.disconnect()


async def test_sockets_open_and_play_while_the_layer_is_down_and_it_rejoins(
    make_canvas, anonymous_play, fresh_layer, monkeypatch
):
    """Redis unreachable when a canvas's first socket arrives: the socket still
    gets its hello and every change (read from the database), and the hub
    subscribes once the layer is back."""
    anonymous_play.PLACE_GAP_TIMEOUT = 0.2
    canvas = await adb(make_canvas)(slug="nolayer", cooldown=0)
    real_group_add = fresh_layer.group_add
    down = True

    async def group_add(group, channel):
        if down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        await real_group_add(group, channel)

    monkeypatch.setattr(fresh_layer, "group_add", group_add)
    watcher, hello = await connect("nolayer")
    player = await adb(Player.objects.create)(name="solo")
    await adb(services.placement_create)(
        canvas_id=canvas.pk, player_id=player.pk, x=1, y=2, color=6
    )
    frame = await receive_type(watcher, "pixels", timeout=5)
    assert frame["updates"] == [[hello["seq"] + 1, 1, 2, 6]]
    down = False
    hub = registry.hubs[canvas.pk]
    for _ in range(50):
        if hub.channel in fresh_layer.groups.get(broadcast.group_name(canvas.pk), {}):
            break
        await asyncio.sleep(0.05)
    assert hub.channel in fresh_layer.groups[broadcast.group_name(canvas.pk)]
    await watcher.disconnect()


async def test_this_processs_own_changes_reach_its_sockets_while_redis_hangs(
    make_canvas, anonymous_play, fresh_layer, monkeypatch
):
    """A Redis that hangs rather than refuses: changes committed here still
    reach this process's sockets at once (no database refill in this test)."""
    anonymous_play.PLACE_GAP_TIMEOUT = 60
    canvas = await adb(make_canvas)(slug="hung", cooldown=0)

    async def hung(group, message):
        await asyncio.sleep(3600)

    watcher, hello = await connect("hung")
    monkeypatch.setattr(fresh_layer, "group_send", hung)
    player = await adb(Player.objects.create)(name="local")
    await adb(services.placement_create)(
        canvas_id=canvas.pk, player_id=player.pk, x=1, y=2, color=6
    )
    frame = await receive_type(watcher, "pixels", timeout=3)
    assert frame["updates"] == [[hello["seq"] + 1, 1, 2, 6]]
    await watcher.disconnect()


async def test_a_settings_change_reaches_every_socket_from_one_read(make_canvas):
    """The hub re-reads the canvas once and sends the same frame to all sockets."""
    from canvas.models import Canvas

    canvas = await adb(make_canvas)(slug="settings", cooldown=300)
    watchers = [(await connect("settings"))[0] for _ in range(3)]

    def pause():
        Canvas.objects.filter(pk=canvas.pk).update(cooldown_seconds=60, is_open=False)
        broadcast.canvas_changed(canvas_id=canvas.pk)

    await adb(pause)()
    for watcher in watchers:
        frame = await receive_type(watcher, "canvas", timeout=5)
        assert frame == {
            "type": "canvas",
            "cooldown_seconds": 60,
            "open": False,
            "width": 32,
            "height": 16,
        }
    for watcher in watchers:
        await watcher.disconnect()


async def test_a_change_made_without_a_notice_still_reaches_sockets_once(
    make_canvas, settings
):
    """As when `manage.py createcanvas` runs beside servers on the in-memory layer:
    no layer message reaches them, the hub's periodic read notices the change."""
    from canvas.models import Canvas

    settings.PLACE_GAP_TIMEOUT = 0.2
    canvas = await adb(make_canvas)(slug="quiet", width=32, height=16, cooldown=300)
    watcher, _ = await connect("quiet")

    def resize_without_notice():
        Canvas.objects.filter(pk=canvas.pk).update(
            width=40, height=20, cooldown_seconds=5
        )

    await adb(resize_without_notice)()
    frame = await receive_type(watcher, "canvas", timeout=5)
    assert frame == {
        "type": "canvas",
        "cooldown_seconds": 5,
        "open": True,
        "width": 40,
        "height": 20,
    }
    # Several more periods pass: the same settings are not announced again.
    await asyncio.sleep(1.0)
    while not await watcher.receive_nothing(timeout=0.1):
        assert json.loads(await watcher.receive_from())["type"] != "canvas"
    await watcher.disconnect()


@pytest.fixture
async def ticking(make_canvas):
    """A hub running its tick loop with one recording socket: (hub, recorder)."""
    canvas = await adb(make_canvas)(slug="ticking")
    hub = Hub(canvas.pk)
    recorder = Recorder()
    hub.join(recorder)
    task = asyncio.create_task(hub._tick_forever())
    yield hub, recorder
    task.cancel()


async def test_a_lone_change_goes_out_at_once_and_a_burst_once_per_tick(ticking):
    """Flushes are at least a tick apart, but a quiet hub does not wait for one."""
    hub, recorder = ticking
    hub.tick_seconds = 1.0
    await asyncio.sleep(0.3)  # quiet for a while: no tick is due
    hub.accept([[1, 0, 0, 1]])
    await asyncio.sleep(0.2)
    assert [f["updates"] for f in recorder.frames] == [[[1, 0, 0, 1]]]
    hub.accept([[2, 1, 0, 1]])
    hub.accept([[3, 2, 0, 1]])
    await asyncio.sleep(0.3)
    assert len(recorder.frames) == 1  # within the tick: held back
    await asyncio.sleep(0.8)
    assert recorder.frames[1]["updates"] == [[2, 1, 0, 1], [3, 2, 0, 1]]


async def test_a_hub_with_nothing_ready_sends_nothing(ticking):
    hub, recorder = ticking
    hub.tick_seconds = 0.05
    hub.accept([[5, 0, 0, 1]])  # not next after seq 0: held for the gap check
    await asyncio.sleep(0.3)
    assert recorder.frames == []
    hub.accept([[1, 0, 0, 2]])
    await asyncio.sleep(0.2)
    assert [f["updates"] for f in recorder.frames] == [[[1, 0, 0, 2]]]


async def test_frames_sent_at_once_reach_every_socket_in_the_same_order(make_canvas):
    """A second frame waits for the first, even behind a socket that is slow."""
    canvas = await adb(make_canvas)(slug="same-order")
    hub = Hub(canvas.pk)

    class SlowForPixels(Recorder):
        async def deliver(self, frame: str) -> None:
            if json.loads(frame)["type"] == "pixels":
                await asyncio.sleep(0.05)  # an ASGI send that takes its time
            await super().deliver(frame)

    recorders = [SlowForPixels() for _ in range(3)]
    for recorder in recorders:
        hub.join(recorder)
    hub.accept([[1, 0, 0, 1]])
    await asyncio.gather(
        hub.flush(), hub.send_all(json.dumps({"type": "online", "count": 3}))
    )
    orders = {tuple(f["type"] for f in r.frames) for r in recorders}
    assert orders == {("pixels", "online")}


async def test_a_socket_that_leaves_mid_frame_is_not_written(make_canvas):
    canvas = await adb(make_canvas)(slug="leaves")
    hub = Hub(canvas.pk)

    sockets = [Slow() for _ in range(3)]
    for listener in sockets:
        hub.join(listener)
    order = list(hub.listeners)
    asyncio.get_running_loop().call_later(0.02, hub.leave, order[-1])
    await hub.send_all(json.dumps({"type": "online", "count": 3}))
    assert order[-1].frames == []
    assert [len(s.frames) for s in order[:-1]] == [1, 1]


async def test_changes_behind_a_gap_do_not_use_up_the_tick(ticking):
    """With several processes, seqs often arrive out of order: 2 before 1."""
    hub, recorder = ticking
    hub.tick_seconds = 1.0
    await asyncio.sleep(0.1)
    hub.accept([[2, 1, 0, 1]])  # seq 1 is still on its way from another process
    await asyncio.sleep(0.1)
    hub.accept([[1, 0, 0, 1]])
    await asyncio.sleep(0.2)  # well within the tick
    assert [f["updates"] for f in recorder.frames] == [[[1, 0, 0, 1], [2, 1, 0, 1]]]


async def _place_thirty(hub: Hub, delivered) -> None:
    """Feed seqs 1..30 every 30 ms; wait (up to 10 s) until all were delivered."""
    for seq in range(1, 31):
        hub.accept([[seq, seq, 0, 1]])
        await asyncio.sleep(0.03)
    for _ in range(200):
        if len(delivered()) >= 30:
            break
        await asyncio.sleep(0.05)
    assert delivered() == list(range(1, 31))  # fewer frames, nothing lost


async def test_a_hub_whose_writes_take_long_sends_fewer_bigger_frames(
    ticking, monkeypatch
):
    """Writes may hold WRITE_SHARE of the loop; slow writes space the frames."""
    hub, recorder = ticking
    hub.tick_seconds = 0.05
    recorder.ready = True
    hub.wires[recorder] = object()  # as if daphne's socket: the direct path
    starts: list[float] = []
    seqs: list[int] = []

    def blocking_write(wire, prepared, limit) -> bool:
        starts.append(time.perf_counter())
        time.sleep(0.12)  # thousands of sockets' worth of kernel sends
        data = prepared.payloadHybi  # a server frame: 2-, 4- or 10-byte header
        length = data[1] & 127
        start = 2 if length < 126 else 4 if length == 126 else 10
        seqs.extend(u[0] for u in json.loads(data[start:])["updates"])
        return True

    monkeypatch.setattr("canvas.hub.sockets.write", blocking_write)
    await _place_thirty(hub, lambda: seqs)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 0.12 s holding the loop per frame: frames 0.12 / WRITE_SHARE (0.6) apart,
    # not back to back (which would leave the loop nothing for anything else).
    assert gaps and min(gaps) >= 0.12 * 1.5 - 0.01


async def test_an_awaited_slow_send_does_not_space_the_frames(ticking):
    """An ASGI send that waits frees the loop meanwhile: no reason to slow down."""
    hub, recorder = ticking
    hub.tick_seconds = 0.05
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def waiting_deliver(frame: str) -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.12)
        recorder.frames.append(json.loads(frame))

    recorder.deliver = waiting_deliver
    await _place_thirty(
        hub, lambda: [u[0] for f in recorder.frames for u in f["updates"]]
    )
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps and min(gaps) < 0.15  # back to back, not 0.2 s apart


async def test_a_socket_joining_while_a_frame_waits_gets_it_in_hello_only(
    make_canvas,
):
    """The frame's sockets are those of its changes' moment, not of its send."""
    canvas = await adb(make_canvas)(slug="join-wait")
    hub = Hub(canvas.pk)

    hub.join(Slow())
    hub.accept([[1, 0, 0, 1]])
    first = asyncio.create_task(hub.flush())
    await asyncio.sleep(0.01)  # seq 1's frame is being sent
    hub.accept([[2, 1, 0, 1]])
    second = asyncio.create_task(hub.flush())
    await asyncio.sleep(0)  # seq 2 taken; its frame waits for the first
    late = Recorder()
    assert hub.join(late) == 2  # this socket's hello says seq 2
    await asyncio.gather(first, second)
    assert late.frames == []  # so it must not get seq 2 again


async def test_a_send_that_never_returns_is_closed_and_does_not_hold_the_canvas(
    make_canvas, monkeypatch
):
    monkeypatch.setattr("canvas.hub.SLOW_ABORT_SECONDS", 0.2)
    canvas = await adb(make_canvas)(slug="stalled")
    hub = Hub(canvas.pk)

    class Stalled(Recorder):
        closed_with: int | None = None

        async def deliver(self, frame: str) -> None:
            await asyncio.Event().wait()  # a client that never drains

        async def close(self, code: int) -> None:
            self.closed_with = code

    stalled, healthy = Stalled(), Recorder()
    hub.join(stalled)
    hub.join(healthy)
    hub.accept([[1, 0, 0, 1]])
    await asyncio.wait_for(hub.flush(), 2)
    hub.accept([[2, 1, 0, 1]])
    await asyncio.wait_for(hub.flush(), 2)  # not held by the stalled socket
    assert [u[0] for f in healthy.frames for u in f["updates"]] == [1, 2]
    await asyncio.sleep(0)
    assert stalled.closed_with == CLOSE_TOO_SLOW
    assert stalled not in hub.listeners


async def test_busy_canvases_share_one_write_budget_per_process(
    make_canvas, monkeypatch
):
    """Two canvases whose frames each hold the loop 0.06 s: alone each could
    send every 0.1 s; together their writes would take 120 % of it, so each
    sends every (0.06 + 0.06) / WRITE_SHARE (0.6) = 0.2 s."""
    hubs, wires, starts = [], [], {}
    for slug in ("budget-a", "budget-b"):
        canvas = await adb(make_canvas)(slug=slug)
        hub = Hub(canvas.pk)
        hub.tick_seconds = 0.05
        listener = Recorder()
        listener.ready = True
        hub.join(listener)
        wire = object()
        hub.wires[listener] = wire
        hubs.append(hub)
        wires.append(wire)
        starts[id(wire)] = []

    def blocking_write(wire, prepared, limit) -> bool:
        starts[id(wire)].append(time.perf_counter())
        time.sleep(0.06)
        return True

    monkeypatch.setattr("canvas.hub.sockets.write", blocking_write)
    monkeypatch.setattr(registry, "hubs", {h.canvas_id: h for h in hubs})
    tasks = [asyncio.create_task(h._tick_forever()) for h in hubs]
    try:
        for seq in range(1, 76):
            for hub in hubs:
                hub.accept([[seq, seq % 32, 0, 1]])
            await asyncio.sleep(0.02)
    finally:
        for task in tasks:
            task.cancel()
    for wire in wires:
        times = starts[id(wire)]
        gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
        assert len(gaps) >= 4
        assert gaps[len(gaps) // 2] >= 0.17  # the median: 0.2 s, not 0.1 s


async def test_a_socket_that_fails_to_receive_is_closed_not_left_silent(make_canvas):
    """Dropped from the hub, it must also end: an open socket that gets no more
    frames would be out of step without knowing it."""
    canvas = await adb(make_canvas)(slug="broken")
    hub = Hub(canvas.pk)

    class Broken(Recorder):
        closed_with: int | None = None

        async def deliver(self, frame: str) -> None:
            raise RuntimeError("the transport is gone")

        async def close(self, code: int) -> None:
            self.closed_with = code

    broken, healthy = Broken(), Recorder()
    hub.join(broken)
    hub.join(healthy)
    hub.accept([[1, 0, 0, 1]])
    await hub.flush()
    await asyncio.sleep(0)
    assert broken not in hub.listeners and broken.closed_with == 4011
    assert [u[0] for f in healthy.frames for u in f["updates"]] == [1]


async def test_the_heartbeat_is_not_queued_behind_other_database_calls(make_canvas):
    """A storm of handshakes keeps the shared database thread busy; the
    heartbeat has its own, or live sockets' rows would go stale and be swept."""
    from channels.db import database_sync_to_async

    from canvas.hub import SERVER_ID
    from canvas.models import Connection

    canvas = await adb(make_canvas)(slug="beat")
    old = await adb(Connection.objects.create)(
        channel_name="alive", canvas=canvas, server=SERVER_ID
    )
    registry.held.add("alive")
    try:
        busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(3))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(registry.beat(), 2)  # not after the 3 s call
        assert not busy.done()
        await busy
        fresh = await adb(Connection.objects.get)(channel_name="alive")
        assert fresh.last_seen > old.last_seen
    finally:
        registry.held.discard("alive")
