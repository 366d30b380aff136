"""The outbox: committed changes reach the canvas group promptly and batched."""

import asyncio
import threading
import time

import pytest
from channels.layers import get_channel_layer

from canvas import broadcast

from . import services_available as svc

pytestmark = pytest.mark.usefixtures("fresh_layer")


async def test_changes_go_out_at_once_and_those_during_a_send_together(
    fresh_layer, monkeypatch
):
    real_send = broadcast._send

    async def slow_send(canvas_id: int, message: dict) -> None:
        await asyncio.sleep(0.3)  # a slow Redis round trip
        await real_send(canvas_id, message)

    monkeypatch.setattr(broadcast, "_send", slow_send)
    channel = await fresh_layer.new_channel("test.")
    await fresh_layer.group_add(broadcast.group_name(77), channel)
    broadcast.outbox_start()
    await asyncio.sleep(0.1)  # quiet: the outbox sleeps

    broadcast.publish(canvas_id=77, updates=[[1, 0, 0, 3]])
    await asyncio.sleep(0.05)  # that send is now in flight
    broadcast.publish(canvas_id=77, updates=[[2, 1, 0, 3]])
    broadcast.publish(canvas_id=77, updates=[[3, 2, 0, 3]])
    first = await asyncio.wait_for(fresh_layer.receive(channel), 0.5)
    assert first["type"] == broadcast.MSG_PIXELS
    assert first["updates"] == [[1, 0, 0, 3]]
    second = await asyncio.wait_for(fresh_layer.receive(channel), 0.5)
    assert second["updates"] == [[2, 1, 0, 3], [3, 2, 0, 3]]
    with pytest.raises(TimeoutError):  # nothing else: one message per send
        await asyncio.wait_for(fresh_layer.receive(channel), 0.5)


async def test_a_change_right_after_a_send_is_not_held_back(monkeypatch):
    """No publish tick: the next commit goes out in the loop's next turns."""
    sent: list[list] = []

    async def recording_send(canvas_id: int, message: dict) -> None:
        sent.append(message["updates"])

    monkeypatch.setattr(broadcast, "_send", recording_send)
    broadcast.outbox_start()
    await asyncio.sleep(0.05)
    broadcast.publish(canvas_id=79, updates=[[1, 0, 0, 3]])
    for _ in range(5):
        await asyncio.sleep(0)  # loop turns only: no clock time for a tick
    assert sent == [[[1, 0, 0, 3]]]
    broadcast.publish(canvas_id=79, updates=[[2, 1, 0, 3]])
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [[[1, 0, 0, 3]], [[2, 1, 0, 3]]]


async def test_an_idle_outbox_sends_nothing(fresh_layer):
    channel = await fresh_layer.new_channel("test.")
    await fresh_layer.group_add(broadcast.group_name(78), channel)
    broadcast.outbox_start()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fresh_layer.receive(channel), 0.3)


@pytest.fixture
def redis_layer(settings, monkeypatch):
    """The production layer: channels-redis's pub/sub on the test Redis."""
    svc.require_redis()
    # Pub/sub ignores the database number: the prefix keeps suites apart.
    prefix = f"test-outbox-db{svc.REDIS_DB}"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [svc.REDIS_URL], "prefix": prefix},
        }
    }
    # Later tests (in-memory layer) get an outbox of their own, not the
    # sender thread's, which stays running for the rest of the session.
    monkeypatch.setattr(broadcast, "_outbox", broadcast._Outbox())
    yield get_channel_layer()
    broadcast.local_hubs.clear()


async def test_on_redis_a_commit_goes_out_while_the_servers_loop_is_busy(
    redis_layer,
):
    """A frame's write holds the server's loop for tens of milliseconds; the
    other processes must not wait for it to hear of a commit."""
    channel = await redis_layer.new_channel("test.")
    await redis_layer.group_add(broadcast.group_name(81), channel)
    here: list[tuple[list, str]] = []
    broadcast.local_hubs[81] = lambda updates, sent_at: here.append(
        (updates, threading.current_thread().name)
    )
    broadcast.outbox_start()

    # The ingest thread commits while this loop is busy for 0.5 s.
    threading.Thread(
        target=broadcast.publish, kwargs={"canvas_id": 81, "updates": [[1, 0, 0, 3]]}
    ).start()
    time.sleep(0.5)
    busy_until = time.time()

    message = await asyncio.wait_for(redis_layer.receive(channel), 2)
    assert message["updates"] == [[1, 0, 0, 3]]
    # Stamped as the send began, so: sent during the busy spell, not after.
    assert message["sent_at"] < busy_until - 0.3
    # This process's own hub got it too, on its loop's thread, once only.
    await asyncio.sleep(0.05)
    assert here == [([[1, 0, 0, 3]], threading.current_thread().name)]


async def test_after_the_hubs_loop_closes_changes_are_sent_at_once(redis_layer):
    """A sender thread left from a loop that has gone (tests start one per
    test) does not take changes for it: they go out from the caller."""
    broadcast.outbox_start()
    assert broadcast._outbox.running_loop() is not None
    broadcast._sender.server_loop = asyncio.new_event_loop()
    broadcast._sender.server_loop.close()
    assert broadcast._outbox.running_loop() is None


async def test_a_failing_hub_does_not_stop_the_send(monkeypatch):
    sent: list[list] = []

    async def recording_send(canvas_id: int, message: dict) -> None:
        sent.append(message["updates"])

    def broken_hub(updates: list, sent_at: float) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(broadcast, "_send", recording_send)
    monkeypatch.setitem(broadcast.local_hubs, 80, broken_hub)
    broadcast.outbox_start()
    broadcast.publish(canvas_id=80, updates=[[1, 0, 0, 3]])
    await asyncio.sleep(0.05)
    assert sent == [[[1, 0, 0, 3]]]


async def test_the_outbox_starts_again_after_an_error(monkeypatch):
    """A failure the outbox did not expect is logged and the outbox starts
    again: later changes still go out."""
    sent: list[list] = []
    real_deliver = broadcast._deliver_local

    async def recording_send(canvas_id: int, message: dict) -> None:
        sent.append(message["updates"])

    def deliver_once_broken(*args) -> None:
        monkeypatch.setattr(broadcast, "_deliver_local", real_deliver)
        raise ValueError("a bug")

    monkeypatch.setattr(broadcast, "_send", recording_send)
    monkeypatch.setattr(broadcast, "_deliver_local", deliver_once_broken)
    broadcast.outbox_start()
    broadcast.publish(canvas_id=80, updates=[[1, 0, 0, 3]])
    await asyncio.sleep(0.05)
    broadcast.publish(canvas_id=80, updates=[[2, 1, 0, 3]])
    await asyncio.sleep(0.05)
    assert sent == [[[2, 1, 0, 3]]]
