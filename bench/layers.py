"""channels-redis core vs pub/sub, as the hubs use them (bench/run.py layers).

Two "processes" (layer instances) each have one hub channel in the canvas
group; a publisher sends `count` group messages of 20 changes, an outbox batch
at 1,000 placements/s (it was 20 ms of changes when the outbox had a publish
tick; one group commit's, now, is about as many). Measures group_send cost and
delivery latency.
"""

import asyncio
import os
import statistics
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django  # noqa: E402

django.setup()

from channels_redis.core import RedisChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: E402


async def measure(kind: str, url: str, count: int, rate: float) -> dict:
    make = {"core": RedisChannelLayer, "pubsub": RedisPubSubChannelLayer}[kind]
    config = {"hosts": [url]}
    if kind == "core":
        config.update(capacity=1000, expiry=30, group_expiry=600)
    publisher = make(**config)
    hubs = [make(**config) for _ in range(2)]
    channels = []
    for layer in hubs:
        channel = await layer.new_channel("hub.")
        await layer.group_add("canvas.bench", channel)
        channels.append(channel)
    await asyncio.sleep(0.2)
    latencies: list[float] = []
    updates = [[i, i % 1000, i // 1000, 3] for i in range(20)]

    async def receive(layer, channel):
        for _ in range(count):
            message = await layer.receive(channel)
            latencies.append(time.time() - message["sent_at"])

    receivers = [
        asyncio.create_task(receive(layer, channel))
        for layer, channel in zip(hubs, channels, strict=True)
    ]
    send_cost = 0.0
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        t = time.perf_counter()
        await publisher.group_send(
            "canvas.bench",
            {"type": "pixels.batch", "updates": updates, "sent_at": time.time()},
        )
        send_cost += time.perf_counter() - t
    await asyncio.wait_for(asyncio.gather(*receivers), 30)
    for layer in [publisher, *hubs]:
        if hasattr(layer, "flush"):
            await layer.flush()
    latencies.sort()
    return {
        "layer": kind,
        "messages": count,
        "per_s": rate,
        "group_send_ms_mean": round(send_cost / count * 1000, 3),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "delivered": len(latencies),
    }


async def main(url: str, count: int, rate: float) -> list[dict]:
    return [await measure(kind, url, count, rate) for kind in ("core", "pubsub")]


if __name__ == "__main__":
    import json

    url, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, count, rate))))
