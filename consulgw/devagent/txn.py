"""``PUT /v1/txn`` for KV operations (consul-api.md section 6.6): every op is evaluated against the transaction's
own view, and the whole set commits at one index or not at all (409 with every failing op)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from typing import Any

from consulgw.devagent.authorizer import Authz
from consulgw.devagent.blocking import QueryOptions, meta_headers
from consulgw.devagent.core import Core
from consulgw.devagent.decode import TXN_KV, TXN_OP, Fields, parse_json
from consulgw.devagent.errors import ApiError, DecodeError
from consulgw.devagent.http import Call, Reply, Router
from consulgw.devagent.kv import MAX_VALUE_SIZE
from consulgw.devagent.records import KVEntry
from consulgw.devagent.render import kv_json
from consulgw.devagent.session import Sessions

MAX_OPS = 128
MAX_TXN_LEN = 512 * 1024
READ_VERBS = frozenset({"get", "get-tree", "get-or-empty", "check-index", "check-session", "check-not-exists"})
ALL_VERBS = READ_VERBS | {"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"}


@dataclass(frozen=True, slots=True, kw_only=True)
class KVOp:
    verb: str
    key: str
    value: bytes
    flags: int
    index: int
    session: str


class _View:
    """The store as the transaction sees it: committed state overlaid with this transaction's writes."""

    def __init__(self, core: Core, index: int) -> None:
        self.store = core.store
        self.index = index
        self.overlay: dict[str, KVEntry | None] = {}

    def get(self, key: str) -> KVEntry | None:
        if key in self.overlay:
            return self.overlay[key]
        return self.store.kv.get(key)

    def tree(self, prefix: str) -> list[KVEntry]:
        keys = {e.key for e in self.store.kv_range(prefix)} | {k for k in self.overlay if k.startswith(prefix)}
        out = [self.get(k) for k in sorted(keys)]
        return [e for e in out if e is not None]

    def put(self, entry: KVEntry) -> KVEntry:
        old = self.get(entry.key)
        new = replace(entry, create_index=old.create_index if old else self.index, modify_index=self.index)
        self.overlay[entry.key] = new
        return new

    def delete(self, key: str) -> None:
        if self.get(key) is not None:
            self.overlay[key] = None


def _parse_ops(body: Any) -> list[KVOp | str]:
    """KV ops, or for a non-KV op the error text it produces."""
    if not isinstance(body, list):
        raise DecodeError("json: cannot unmarshal object into Go value of type api.TxnOps")
    ops: list[KVOp | str] = []
    for item in body:
        f = Fields(item, "TxnOp", known=TXN_OP)
        kv = f.obj("KV", "KVTxnOp", known=TXN_KV)
        if kv is None:
            kinds = [k for k in ("Node", "Service", "Check", "Session") if f.has(k)]
            ops.append(f"{kinds[0] if kinds else 'unknown'} operations are not supported by the dev agent")
            continue
        raw_value = kv.raw("Value")
        value = b""
        if raw_value is not None:
            if not isinstance(raw_value, str):
                raise DecodeError("json: cannot unmarshal into Go struct field KVTxnOp.KV.Value of type []uint8")
            try:
                value = base64.b64decode(raw_value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(f"illegal base64 data at input byte {len(raw_value)}") from exc
        ops.append(
            KVOp(
                verb=kv.string("Verb"),
                key=kv.string("Key"),
                value=value,
                flags=kv.integer("Flags", gotype="uint64"),
                index=kv.integer("Index", gotype="uint64"),
                session=kv.string("Session"),
            )
        )
    return ops


class TxnEndpoint:
    def __init__(self, core: Core, sessions: Sessions) -> None:
        self.core = core
        self.sessions = sessions

    def register(self, router: Router) -> None:
        router.add("/v1/txn", ("PUT",), self.txn)

    async def txn(self, call: Call) -> Reply:
        def too_large(length: int) -> ApiError:
            return ApiError(
                413,
                f"Request body({length} bytes) too large, max size: {MAX_TXN_LEN} bytes. See "
                "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len.",
            )

        raw = await call.body(MAX_TXN_LEN, too_large)
        self.core.check_dc(call)
        try:
            ops = _parse_ops(parse_json(raw))
        except DecodeError as exc:
            raise ApiError(400, f"Failed to parse body: {exc}") from exc
        if len(ops) > MAX_OPS:
            raise ApiError(413, f"Transaction contains too many operations ({len(ops)} > {MAX_OPS})")
        for op in ops:
            if isinstance(op, KVOp) and len(op.value) > MAX_VALUE_SIZE:
                raise ApiError(413, f'Value for key "{op.key}" is too large ({len(op.value)} > {MAX_VALUE_SIZE} bytes)')
        store = self.core.store
        view = _View(self.core, store.index + 1)
        authz = call.authz()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for pos, op in enumerate(ops):
            if isinstance(op, str):
                errors.append({"OpIndex": pos, "What": op})
                continue
            try:
                _vet(authz, op)
                results.extend(self._apply(view, op))
            except ApiError as exc:
                errors.append({"OpIndex": pos, "What": exc.text})
            except ValueError as exc:
                errors.append({"OpIndex": pos, "What": str(exc)})
        if not authz.unrestricted:  # reads of keys the token cannot read are dropped from the results
            results = [r for r in results if "KV" not in r or authz.allows("key", "read", r["KV"]["Key"])]
        read_only = all(isinstance(op, KVOp) and op.verb in READ_VERBS for op in ops)
        headers: dict[str, str] = {}
        if read_only:
            meta = meta_headers(store.index, QueryOptions())
            headers = {k: v for k, v in meta.items() if k in ("X-Consul-KnownLeader", "X-Consul-LastContact")}
        if errors:
            return call.reply({"Results": None, "Errors": errors}, status=409, headers=headers)
        if view.overlay:
            with store.write() as tx:
                for key, entry in view.overlay.items():
                    if entry is None:
                        tx.kv_delete(key)
                    else:
                        tx.kv_put_raw(entry)
        return call.reply({"Results": results or None, "Errors": None}, headers=headers)

    def _apply(self, view: _View, op: KVOp) -> list[dict[str, Any]]:
        verb, key = op.verb, op.key
        if verb not in ALL_VERBS:
            raise ValueError(f'unknown KV verb "{verb}"')
        existing = view.get(key)

        def result(entry: KVEntry, *, with_value: bool = False) -> list[dict[str, Any]]:
            rendered = kv_json(entry)
            if not with_value:
                rendered["Value"] = None
            return [{"KV": rendered}]

        if verb == "set":
            return result(view.put(_entry(op, existing)))
        if verb == "cas":
            if (op.index == 0 and existing is not None) or (
                op.index != 0 and (existing is None or existing.modify_index != op.index)
            ):
                raise ValueError(f'failed to set key "{key}", index is stale')
            return result(view.put(_entry(op, existing)))
        if verb == "lock":
            if not op.session:
                raise ValueError("missing session")
            if op.session not in view.store.sessions:
                raise ValueError(f'invalid session "{op.session}"')
            lock_index = 1
            if existing is not None:
                if existing.session == op.session:
                    lock_index = existing.lock_index
                elif existing.session or self.sessions.lock_delayed(key):
                    raise ValueError(f'failed to lock key "{key}", lock is already held')
                else:
                    lock_index = existing.lock_index + 1
            entry = KVEntry(key=key, value=op.value, flags=op.flags, session=op.session, lock_index=lock_index)
            return result(view.put(entry))
        if verb == "unlock":
            if not op.session:
                raise ValueError("missing session")
            if existing is None or existing.session != op.session:
                raise ValueError(f'failed to unlock key "{key}", lock isn\'t held, or is held by another session')
            entry = KVEntry(key=key, value=op.value, flags=op.flags, session="", lock_index=existing.lock_index)
            return result(view.put(entry))
        if verb == "get":
            if existing is None:
                raise ValueError(f'key "{key}" doesn\'t exist')
            return result(existing, with_value=True)
        if verb == "get-or-empty":
            return result(existing if existing is not None else KVEntry(key=key), with_value=True)
        if verb == "get-tree":
            return [{"KV": kv_json(e)} for e in view.tree(key)]
        if verb == "check-index":
            if existing is None:
                raise ValueError(f'key "{key}" doesn\'t exist')
            if existing.modify_index != op.index:
                raise ValueError(f"current modify index {existing.modify_index} != {op.index}")
            return result(existing)
        if verb == "check-session":
            if existing is None:
                raise ValueError(f'key "{key}" doesn\'t exist')
            if existing.session != op.session:
                raise ValueError(f'current session "{existing.session}" != "{op.session}"')
            return result(existing)
        if verb == "check-not-exists":
            if existing is not None:
                raise ValueError(f'key "{key}" exists')
            return []
        if verb == "delete":
            view.delete(key)
            return []
        if verb == "delete-tree":
            for entry in view.tree(key):
                view.delete(entry.key)
            return []
        # delete-cas
        if existing is None or existing.modify_index != op.index:
            if existing is not None:
                raise ValueError(f'failed to delete key "{key}", index is stale')
            return []
        view.delete(key)
        return []


def _vet(authz: Authz, op: KVOp) -> None:
    """Consul's kvsPreApply: reads are filtered afterwards, checks need read, everything else write."""
    if op.verb == "delete-tree":
        authz.require_key_write_prefix(op.key)
    elif op.verb in ("get", "get-tree", "get-or-empty"):
        return
    elif op.verb in ("check-session", "check-index"):
        authz.require("key", "read", op.key)
    else:
        authz.require("key", "write", op.key)


def _entry(op: KVOp, existing: KVEntry | None) -> KVEntry:
    return KVEntry(
        key=op.key,
        value=op.value,
        flags=op.flags,
        session=existing.session if existing else "",
        lock_index=existing.lock_index if existing else 0,
    )
