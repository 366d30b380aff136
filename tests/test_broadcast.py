"""The outbox: committed changes reach the canvas group promptly and batched."""

import asyncio

import pytest

from canvas import broadcast

pytestmark = pytest.mark.usefixtures("fresh_layer")


async def test_a_quiet_outbox_publishes_at_once_then_once_per_tick(
    fresh_layer, monkeypatch
):
    monkeypatch.setattr(broadcast, "PUBLISH_TICK", 1.0)
    channel = await fresh_layer.new_channel("test.")
    await fresh_layer.group_add(broadcast.group_name(77), channel)
    broadcast.outbox_start()
    await asyncio.sleep(0.2)  # quiet: nothing is due

    broadcast.publish(canvas_id=77, updates=[[1, 0, 0, 3]])
    first = await asyncio.wait_for(fresh_layer.receive(channel), 0.5)
    assert first["type"] == broadcast.MSG_PIXELS
    assert first["updates"] == [[1, 0, 0, 3]]

    broadcast.publish(canvas_id=77, updates=[[2, 1, 0, 3]])
    broadcast.publish(canvas_id=77, updates=[[3, 2, 0, 3]])
    with pytest.raises(TimeoutError):  # within the tick: held back
        await asyncio.wait_for(fresh_layer.receive(channel), 0.4)
    second = await asyncio.wait_for(fresh_layer.receive(channel), 1.5)
    assert second["updates"] == [[2, 1, 0, 3], [3, 2, 0, 3]]
