"""Wake-ups: shared futures per topic, released when nobody waits, prefix topics found without scanning keys."""

from __future__ import annotations

import asyncio

from consulgw.devagent.watch import KV_KEY, KV_PREFIX, Watch


async def test_one_future_per_topic_and_notify_wakes_all() -> None:
    watch = Watch()
    futures = [watch.acquire("kvk:a") for _ in range(1000)]
    assert len({id(f) for f in futures}) == 1
    assert watch.topic_count == 1
    watch.notify(["kvk:a"])
    assert futures[0].done()
    assert watch.topic_count == 0


async def test_released_topics_hold_no_memory() -> None:
    watch = Watch()
    a = watch.acquire("nodes")
    b = watch.acquire("nodes")
    watch.release("nodes", a)
    assert watch.topic_count == 1
    watch.release("nodes", b)
    assert watch.topic_count == 0


async def test_release_after_notify_does_not_touch_the_next_generation() -> None:
    watch = Watch()
    old = watch.acquire("checks")
    watch.notify(["checks"])
    new = watch.acquire("checks")
    watch.release("checks", old)
    assert watch.topic_count == 1
    watch.release("checks", new)
    assert watch.topic_count == 0


async def test_kv_topics_include_watched_prefixes_only() -> None:
    watch = Watch()
    for prefix in ("", "app/", "app/web/", "other/"):
        watch.acquire(KV_PREFIX + prefix)
    topics = set(watch.kv_topics("app/web/config"))
    assert topics == {KV_KEY + "app/web/config", KV_PREFIX, KV_PREFIX + "app/", KV_PREFIX + "app/web/"}
    many = Watch()
    for n in range(50):
        many.acquire(f"{KV_PREFIX}p{n}/")
    assert set(many.kv_topics("p7/x")) == {KV_KEY + "p7/x", KV_PREFIX + "p7/"}


async def test_cancel_all_cancels_pending() -> None:
    watch = Watch()
    fut = watch.acquire("nodes")
    watch.cancel_all()
    await asyncio.sleep(0)
    assert fut.cancelled()
    assert watch.topic_count == 0
