"""``/v1/kv/`` (consul-api.md section 6): reads with recurse/keys/separator/raw and Consul's index rules, writes
with flags/cas/acquire/release, deletes with recurse/cas, the 512 KiB value limit, and tombstones."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from consulgw.devagent.blocking import Answer, QueryOptions, meta_headers, parse_uint64
from consulgw.devagent.core import Core, Tally
from consulgw.devagent.errors import ApiError, bad_request, server_error
from consulgw.devagent.http import Call, Reply, Router
from consulgw.devagent.records import KVEntry
from consulgw.devagent.render import kv_json
from consulgw.devagent.session import Sessions
from consulgw.devagent.store import Store, Txn
from consulgw.devagent.watch import KV_KEY, KV_PREFIX

MAX_VALUE_SIZE = 512 * 1024
SIZE_DOC = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"


def too_large(length: int) -> ApiError:
    return ApiError(413, f"Request body({length} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See {SIZE_DOC}.")


def parse_uint_param(call: Call, name: str) -> int:
    raw = call.param(name)
    value = parse_uint64(raw)
    if value is None:
        reason = "value out of range" if raw.isdigit() else "invalid syntax"
        raise server_error(f'strconv.ParseUint: parsing "{raw}": {reason}')
    return value


def conflicting(call: Call, *names: str) -> None:
    if sum(1 for n in names if call.has(n)) > 1:
        encoded = urllib.parse.urlencode(sorted(call.query.items()), quote_via=urllib.parse.quote_plus)
        raise bad_request(f"Conflicting flags: {encoded}\n")


def validate_key(key: str) -> None:
    if "../" in key or "..\\" in key or key in ("..",) or key.endswith("/.."):
        raise bad_request(f'Invalid key name "{key}": path traversal is not allowed')


def list_keys(entries: Iterable[KVEntry], prefix: str, sep: str) -> list[str]:
    keys: list[str] = []
    last = ""
    for entry in entries:
        if not sep:
            keys.append(entry.key)
            continue
        after = entry.key[len(prefix) :]
        pos = after.find(sep)
        if pos >= 0:
            key = entry.key[: len(prefix) + pos + len(sep)]
            if key != last:
                keys.append(key)
                last = key
        else:
            keys.append(entry.key)
    return keys


# ---- the write operations, shared with /v1/txn -------------------------------------------------------------


def kv_set(tx: Txn, store: Store, key: str, value: bytes, flags: int) -> KVEntry:
    old = store.kv.get(key)
    entry = KVEntry(
        key=key,
        value=value,
        flags=flags,
        session=old.session if old else "",
        lock_index=old.lock_index if old else 0,
    )
    return tx.kv_put(entry)


def kv_cas(tx: Txn, store: Store, key: str, value: bytes, flags: int, index: int) -> KVEntry | None:
    old = store.kv.get(key)
    if index == 0 and old is not None:
        return None
    if index != 0 and (old is None or old.modify_index != index):
        return None
    return kv_set(tx, store, key, value, flags)


def kv_lock(tx: Txn, store: Store, key: str, value: bytes, flags: int, session: str) -> KVEntry | None:
    if not session:
        raise ValueError("missing session")
    if session not in store.sessions:
        raise ValueError(f'invalid session "{session}"')
    old = store.kv.get(key)
    lock_index = 1
    if old is not None:
        if old.session == session:
            lock_index = old.lock_index
        elif old.session:
            return None
        else:
            lock_index = old.lock_index + 1
    return tx.kv_put(KVEntry(key=key, value=value, flags=flags, session=session, lock_index=lock_index))


def kv_unlock(tx: Txn, store: Store, key: str, value: bytes, flags: int, session: str) -> KVEntry | None:
    if not session:
        raise ValueError("missing session")
    old = store.kv.get(key)
    if old is None or old.session != session:
        return None
    return tx.kv_put(KVEntry(key=key, value=value, flags=flags, session="", lock_index=old.lock_index))


def kv_delete_tree(tx: Txn, store: Store, prefix: str) -> None:
    for entry in list(store.kv_range(prefix)):
        tx.kv_delete(entry.key)


def kv_delete_cas(tx: Txn, store: Store, key: str, index: int) -> bool:
    old = store.kv.get(key)
    if old is None or old.modify_index != index:
        return old is None
    tx.kv_delete(key)
    return True


class KVEndpoints:
    """With ACLs: a key read needs ``key:read`` (403 otherwise); ``recurse`` and ``keys`` drop the keys the token
    cannot read (404 when none is left) and, only with ``acl.enable_key_list_policy``, first need ``key:list`` on
    the prefix; writes need ``key:write``, a recursive delete write on the whole prefix."""

    def __init__(self, core: Core, sessions: Sessions, *, key_list_policy: bool = False) -> None:
        self.core = core
        self.sessions = sessions
        self.key_list_policy = key_list_policy

    def register(self, router: Router) -> None:
        router.add("/v1/kv/", ("GET", "PUT", "DELETE"), self.dispatch)

    async def dispatch(self, call: Call) -> Reply:
        method = call.request.method
        if method == "GET":
            return await self.get(call)
        if method == "PUT":
            return await self.put(call)
        return await self.delete(call)

    async def get(self, call: Call) -> Reply:
        key = call.suffix
        opts = self.core.read_options(call)
        store = self.core.store
        authz = call.authz()
        listing = call.has("keys") or call.has("recurse")
        if listing and self.key_list_policy:
            authz.require("key", "list", key)
        tally = Tally()

        def readable() -> list[KVEntry]:
            return [e for e in store.kv_range(key) if tally.keep(authz.allows("key", "read", e.key))]

        if call.has("keys"):
            sep = call.param("separator") if call.has("separator") else call.param("seperator")

            def keys_query() -> Answer:
                entries = readable()
                return Answer(
                    index=store.kv_prefix_index(key),
                    topics=(KV_PREFIX + key,),
                    found=key == "" or bool(entries),
                    render=lambda: list_keys(entries, key, sep),
                )

            answer = await self.core.blocking(opts, keys_query)
            if not answer.found:
                return self._not_found(call, answer.index, opts, tally.removed)
            value = answer.value
            return call.reply_meta(value, answer.index, opts, filtered=tally.removed)
        if call.has("recurse"):

            def list_query() -> Answer:
                entries = readable()
                return Answer(
                    index=store.kv_prefix_index(key),
                    topics=(KV_PREFIX + key,),
                    found=bool(entries),
                    render=lambda: [kv_json(e) for e in entries],
                )

            answer = await self.core.blocking(opts, list_query)
            if not answer.found:
                return self._not_found(call, answer.index, opts, tally.removed)
            value = answer.value
            return call.reply_meta(value, answer.index, opts, filtered=tally.removed)
        if not key:
            raise bad_request("Missing key name")
        authz.require("key", "read", key)

        def get_query() -> Answer:
            entry = store.kv.get(key)
            if entry is None:
                return Answer(
                    index=store.kv_store_index(), topics=(KV_KEY + key,), found=False, block_while_missing=True
                )
            return Answer(index=entry.modify_index, topics=(KV_KEY + key,), render=lambda: entry)

        answer = await self.core.blocking(opts, get_query)
        if not answer.found:
            return self._not_found(call, answer.index, opts)
        entry = answer.value
        if call.has("raw"):
            reply = call.reply_meta(None, answer.index, opts)
            reply.body = entry.value
            reply.content_type = "text/plain"
            reply.headers["X-Content-Type-Options"] = "nosniff"
            reply.headers["Content-Security-Policy"] = "sandbox"
            return reply
        return call.reply_meta([kv_json(entry)], answer.index, opts)

    def _not_found(self, call: Call, index: int, opts: QueryOptions, filtered: bool = False) -> Reply:
        return Reply(status=404, headers={**meta_headers(index, opts), **call.filtered(filtered)})

    async def put(self, call: Call) -> Reply:
        key = call.suffix
        self.core.read_options(call)  # Consul's KV endpoint parses the common query options for every method
        if not key:
            raise bad_request("Missing key name")
        validate_key(key)
        conflicting(call, "cas", "acquire", "release")
        flags = parse_uint_param(call, "flags") if call.has("flags") else 0
        cas = parse_uint_param(call, "cas") if call.has("cas") else None
        value = await call.body(MAX_VALUE_SIZE, too_large)
        call.authz().require("key", "write", key)
        store = self.core.store
        with store.write() as tx:
            try:
                if call.has("acquire"):
                    session = call.param("acquire")
                    if self.sessions.lock_delayed(key) and session in store.sessions:
                        return call.reply(False)
                    result = kv_lock(tx, store, key, value, flags, session) is not None
                elif call.has("release"):
                    result = kv_unlock(tx, store, key, value, flags, call.param("release")) is not None
                elif cas is not None:
                    result = kv_cas(tx, store, key, value, flags, cas) is not None
                else:
                    kv_set(tx, store, key, value, flags)
                    result = True
            except ValueError as exc:
                raise server_error(str(exc)) from exc
        return call.reply(result)

    async def delete(self, call: Call) -> Reply:
        key = call.suffix
        self.core.read_options(call)
        conflicting(call, "recurse", "cas")
        recurse = call.has("recurse")
        if not recurse and not key:
            raise bad_request("Missing key name")
        cas = parse_uint_param(call, "cas") if call.has("cas") else None
        if recurse:
            call.authz().require_key_write_prefix(key)
        else:
            call.authz().require("key", "write", key)
        store = self.core.store
        with store.write() as tx:
            if recurse:
                kv_delete_tree(tx, store, key)
                result = True
            elif cas is not None:
                result = kv_delete_cas(tx, store, key, cas)
            else:
                tx.kv_delete(key)
                result = True
        return call.reply(result)
