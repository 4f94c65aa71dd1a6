"""The Redis backend (``backend: redis``): one cache shared by every gateway on the same ``--redis``.

Keys, all below ``consulgw:cache:<service>:<generation>:`` (the generation changes with a purge, see
:mod:`consulgw.cache.purge`):

* ``v:<slot>``: the slot's ``Vary`` list (JSON), ``e:<slot>:<variant>``: one stored answer
  (:meth:`StoredAnswer.encode`), both with a TTL (freshness plus the stale windows);
* ``p:<path>``: the set of keys stored for one upstream path (an unsafe request deletes them);
* ``l:<slot>``: the fill lock, ``SET NX PX`` with a random token, so that N gateways missing the same key at once
  send one request upstream, not N (the others poll for the entry a short while).

A lookup is one round trip when the slot varies on nothing (its list and the ``-`` variant are read together), two
otherwise. A store is one Lua script (entry, list and path set together, the set's TTL only ever extended). Every
call is bounded by ``timeout`` (redis-py drops a connection whose command was cancelled) and every failure is
translated here, once, into ``CacheUnavailable``; the step applies the policy's ``on_backend_error``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from redis.exceptions import RedisError

from consulgw.cache.entry import StoredAnswer
from consulgw.cache.keys import Slot, variant_for
from consulgw.cache.store import NOTHING, Found
from consulgw.errors import CacheUnavailable
from consulgw.redisclient import RedisClient

PREFIX = "consulgw:cache:"
T = TypeVar("T")

# KEYS: slot list, entry, path set; ARGV: Vary list (JSON), entry bytes, keep (ms).
STORE_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1], KEYS[2])
local left = redis.call('PTTL', KEYS[3])
if left < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
return 1
"""
# KEYS: lock; ARGV: token. Deletes the lock only if it is still ours.
UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def namespace(service: str, generation: str) -> str:
    return f"{PREFIX}{_key_part(service)}:{generation}:"


def _key_part(text: str) -> str:
    """A service name as one key segment: ':' (the separator) and '%' escaped, so no name is a prefix of another's."""
    return text.replace("%", "%25").replace(":", "%3A")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    backend = "redis"

    def __init__(self, redis: RedisClient, *, timeout: float = 0.25) -> None:
        self._redis = redis
        self._timeout = timeout
        self._store = redis.register_script(STORE_SCRIPT)
        self._unlock = redis.register_script(UNLOCK_SCRIPT)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable("the cache backend is unavailable") from exc

    async def lookup(self, slot: Slot, headers: Mapping[str, str]) -> Found:
        space = namespace(slot.service, slot.generation)
        index_key = f"{space}v:{slot.digest}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(index_key)
        pipe.get(f"{space}e:{slot.digest}:-")
        raw_vary, raw_entry = await self._call(pipe.execute())
        vary = _vary(raw_vary)
        if vary is None:
            return NOTHING
        if vary:
            raw_entry = await self._call(self._redis.get(f"{space}e:{slot.digest}:{variant_for(vary, headers)}"))
        return Found(vary, _entry(raw_entry))

    async def store(self, slot: Slot, variant: str, entry: StoredAnswer, keep: float) -> None:
        keep_ms = int(keep * 1000)
        if keep_ms <= 0:
            return
        space = namespace(slot.service, slot.generation)
        keys = [f"{space}v:{slot.digest}", f"{space}e:{slot.digest}:{variant}", f"{space}p:{slot.path}"]
        await self._call(self._store(keys=keys, args=[json.dumps(list(entry.vary)), entry.encode(), keep_ms]))

    async def invalidate(self, slot: Slot) -> None:
        path_key = f"{namespace(slot.service, slot.generation)}p:{slot.path}"
        members: Any = await self._call(self._redis.smembers(path_key))
        await self._call(self._redis.delete(path_key, *members))

    async def lock(self, slot: Slot, seconds: float) -> str | None:
        """Take the slot's fill lock for ``seconds``; its token, or None when another gateway holds it."""
        token = secrets.token_hex(8)
        key = f"{namespace(slot.service, slot.generation)}l:{slot.digest}"
        taken = await self._call(self._redis.set(key, token, nx=True, px=max(1, int(seconds * 1000))))
        return token if taken else None

    async def unlock(self, slot: Slot, token: str) -> None:
        key = f"{namespace(slot.service, slot.generation)}l:{slot.digest}"
        await self._call(self._unlock(keys=[key], args=[token]))

    async def drop_other_generations(self, service: str, generation: str, *, batch: int = 500) -> int:
        """Delete the service's keys of every generation but ``generation`` (after a purge); returns how many."""
        keep = namespace(service, generation).encode()
        pattern = f"{PREFIX}{_glob_escape(_key_part(service))}:*"
        dropped = 0
        cursor: Any = 0
        while True:
            cursor, keys = await self._call(self._redis.scan(cursor=cursor, match=pattern, count=batch))
            stale = [k for k in keys if not (k if isinstance(k, bytes) else str(k).encode()).startswith(keep)]
            if stale:
                dropped += int(await self._call(self._redis.unlink(*stale)))
            if not cursor:
                return dropped


def _vary(raw: object) -> tuple[str, ...] | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def _entry(raw: object) -> StoredAnswer | None:
    if not isinstance(raw, bytes):
        return None
    try:
        return StoredAnswer.decode(raw)
    except ValueError:
        return None  # another version's or a foreign value: a miss, overwritten by the next store
