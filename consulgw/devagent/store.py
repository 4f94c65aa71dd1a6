"""The dev agent's state: Consul's catalog, KV and session tables under one Raft-like index.

Every effective write takes the next index once per transaction and stamps the records it touched; a write that
changes nothing takes no index and wakes nobody. Next to the tables live the indexes blocking queries report
(consul-api.md section 2.4): per-table maxima, a per-service index bumped by instance and check changes (and by
node-level checks of the nodes hosting the service), the last-extinction index, and KV tombstones so a prefix
index never moves backwards when a key is deleted.

Records are frozen; a write replaces them whole. All mutation goes through :class:`Txn`, which notifies the
topics it touched when it closes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType

from consulgw.devagent.records import Check, KVEntry, Node, Service, Session
from consulgw.devagent.watch import Watch

TABLES = ("nodes", "services", "checks", "kvs", "tombstones", "sessions")


class Store:
    def __init__(self, *, start_index: int = 1) -> None:
        self.index = start_index
        self.nodes: dict[str, Node] = {}
        self.services: dict[tuple[str, str], Service] = {}
        self.checks: dict[tuple[str, str], Check] = {}
        # secondary indexes, maintained by Txn, so per-service and per-node reads never scan the whole catalog
        self.services_by_name: dict[str, dict[tuple[str, str], Service]] = {}
        self.services_by_node: dict[str, dict[str, Service]] = {}
        self.checks_by_node: dict[str, dict[str, Check]] = {}
        self.kv: dict[str, KVEntry] = {}
        self.kv_keys: list[str] = []  # sorted, for prefix scans
        self.tombstones: dict[str, int] = {}
        self.sessions: dict[str, Session] = {}
        self.table_index: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.service_index: dict[str, int] = {}
        self.extinction_index = 0
        self.watch = Watch()
        # called with the touched topics after every effective write (e.g. alias checks re-evaluate)
        self.commit_hooks: list[Callable[[set[str]], None]] = []

    def write(self) -> Txn:
        return Txn(self)

    # ---- reads -------------------------------------------------------------------------------------------------

    def max_index(self, *tables: str) -> int:
        return max(self.table_index[t] for t in tables)

    def service_query_index(self, name: str) -> int:
        """Index for catalog/service and health/service (Consul's maxIndexAndWatchChForService)."""
        idx = self.service_index.get(name)
        if idx:
            return idx
        if self.extinction_index:
            return self.extinction_index
        return self.max_index("nodes", "services")

    def kv_store_index(self) -> int:
        return self.max_index("kvs", "tombstones")

    def kv_prefix_index(self, prefix: str) -> int:
        if prefix == "":
            return self.kv_store_index()
        best = 0
        for entry in self.kv_range(prefix):
            best = max(best, entry.modify_index)
        for key, idx in self.tombstones.items():
            if idx > best and key.startswith(prefix):
                best = idx
        return best or self.kv_store_index()

    def kv_range(self, prefix: str) -> Iterator[KVEntry]:
        start = bisect.bisect_left(self.kv_keys, prefix)
        for pos in range(start, len(self.kv_keys)):
            key = self.kv_keys[pos]
            if not key.startswith(prefix):
                break
            yield self.kv[key]

    def services_on_node(self, node: str) -> list[Service]:
        return sorted(self.services_by_node.get(node, {}).values(), key=lambda s: s.id)

    def instances(self, name: str) -> list[Service]:
        """Instances of a service, ordered by node name then service ID (MemDB order)."""
        return [svc for _, svc in sorted(self.services_by_name.get(name, {}).items())]

    def checks_on_node(self, node: str) -> list[Check]:
        return sorted(self.checks_by_node.get(node, {}).values(), key=lambda c: c.check_id)

    def node_checks(self, node: str) -> list[Check]:
        return [c for c in self.checks_on_node(node) if not c.service_id]

    def service_checks(self, node: str, service_id: str) -> list[Check]:
        return [c for c in self.checks_on_node(node) if c.service_id == service_id]

    def _index_service(self, svc: Service, old: Service | None) -> None:
        key = (svc.node, svc.id)
        if old is not None and old.name != svc.name:
            self._unindex_service(old)
        self.services[key] = svc
        self.services_by_name.setdefault(svc.name, {})[key] = svc
        self.services_by_node.setdefault(svc.node, {})[svc.id] = svc

    def _unindex_service(self, svc: Service) -> None:
        by_name = self.services_by_name.get(svc.name, {})
        by_name.pop((svc.node, svc.id), None)
        if not by_name:
            self.services_by_name.pop(svc.name, None)
        by_node = self.services_by_node.get(svc.node, {})
        by_node.pop(svc.id, None)
        if not by_node:
            self.services_by_node.pop(svc.node, None)

    def _index_check(self, chk: Check) -> None:
        self.checks[(chk.node, chk.check_id)] = chk
        self.checks_by_node.setdefault(chk.node, {})[chk.check_id] = chk

    def _unindex_check(self, chk: Check) -> None:
        by_node = self.checks_by_node.get(chk.node, {})
        by_node.pop(chk.check_id, None)
        if not by_node:
            self.checks_by_node.pop(chk.node, None)

    def checks_sorted(self) -> list[Check]:
        return [self.checks[k] for k in sorted(self.checks)]


class Txn:
    """One atomic write. Takes a new index lazily, on the first effective change; notifies topics on close."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._index = 0
        self.topics: set[str] = set()

    def __enter__(self) -> Txn:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.commit()

    def commit(self) -> None:
        if self.topics:
            topics, self.topics = self.topics, set()
            self.store.watch.notify(topics)
            for hook in list(self.store.commit_hooks):
                hook(topics)

    @property
    def index(self) -> int:
        if not self._index:
            self.store.index += 1
            self._index = self.store.index
        return self._index

    @property
    def changed(self) -> bool:
        return bool(self._index)

    def _touch(self, table: str) -> int:
        idx = self.index
        self.store.table_index[table] = idx
        self.topics.add(table)
        return idx

    def _touch_service(self, name: str) -> None:
        self.store.service_index[name] = self.index
        self.topics.add("svc:" + name)

    def _touch_services_of_node(self, node: str) -> None:
        for svc in self.store.services_on_node(node):
            self._touch_service(svc.name)

    # ---- nodes ---------------------------------------------------------------------------------------------------

    def put_node(self, node: Node) -> Node:
        old = self.store.nodes.get(node.name)
        if old is not None and old.same(node):
            return old
        idx = self._touch("nodes")
        new = replace(node, create_index=old.create_index if old else idx, modify_index=idx)
        self.store.nodes[node.name] = new
        self._touch_services_of_node(node.name)
        return new

    def delete_node(self, name: str) -> bool:
        if name not in self.store.nodes:
            return False
        for svc in self.store.services_on_node(name):
            self.delete_service(name, svc.id)
        for chk in self.store.checks_on_node(name):
            self.delete_check(name, chk.check_id)
        for sess in [s for s in self.store.sessions.values() if s.node == name]:
            self.delete_session(sess.id)
        del self.store.nodes[name]
        self._touch("nodes")
        return True

    # ---- services ------------------------------------------------------------------------------------------------

    def put_service(self, svc: Service) -> Service:
        key = (svc.node, svc.id)
        old = self.store.services.get(key)
        if old is not None and old.same(svc):
            return old
        idx = self._touch("services")
        new = replace(svc, create_index=old.create_index if old else idx, modify_index=idx)
        self.store._index_service(new, old)
        self._touch_service(svc.name)
        if old is not None and old.name != svc.name:
            self._retire_service_name(old.name)
        return new

    def delete_service(self, node: str, service_id: str) -> bool:
        old = self.store.services.pop((node, service_id), None)
        if old is None:
            return False
        self.store._unindex_service(old)
        for chk in self.store.service_checks(node, service_id):
            self.delete_check(node, chk.check_id)
        self._touch("services")
        self._touch_service(old.name)
        self._retire_service_name(old.name)
        return True

    def _retire_service_name(self, name: str) -> None:
        if name not in self.store.services_by_name:
            self.store.service_index.pop(name, None)
            self.store.extinction_index = self.index

    # ---- checks --------------------------------------------------------------------------------------------------

    def put_check(self, chk: Check) -> Check:
        key = (chk.node, chk.check_id)
        old = self.store.checks.get(key)
        if old is not None and old.same(chk):
            return old
        idx = self._touch("checks")
        new = replace(chk, create_index=old.create_index if old else idx, modify_index=idx)
        self.store._index_check(new)
        self._touch_check_owners(new)
        if old is not None and old.service_id != new.service_id:
            self._touch_check_owners(old)
        return new

    def delete_check(self, node: str, check_id: str) -> bool:
        old = self.store.checks.pop((node, check_id), None)
        if old is None:
            return False
        self.store._unindex_check(old)
        self._touch("checks")
        self._touch_check_owners(old)
        return True

    def _touch_check_owners(self, chk: Check) -> None:
        if chk.service_id:
            svc = self.store.services.get((chk.node, chk.service_id))
            if svc is not None:
                self._touch_service(svc.name)
        else:
            self._touch_services_of_node(chk.node)

    # ---- KV ------------------------------------------------------------------------------------------------------

    def kv_put(self, entry: KVEntry) -> KVEntry:
        """Write ``entry``; CreateIndex is kept for an existing key; the new ModifyIndex is stamped."""
        old = self.store.kv.get(entry.key)
        idx = self._touch("kvs")
        new = replace(entry, create_index=old.create_index if old else idx, modify_index=idx)
        if old is None:
            bisect.insort(self.store.kv_keys, entry.key)
        self.store.kv[entry.key] = new
        self.topics.update(self.store.watch.kv_topics(entry.key))
        return new

    def kv_put_raw(self, entry: KVEntry) -> KVEntry:
        """Store an entry whose indexes were computed by the caller (a transaction at this Txn's index)."""
        self._touch("kvs")
        if entry.key not in self.store.kv:
            bisect.insort(self.store.kv_keys, entry.key)
        self.store.kv[entry.key] = entry
        self.topics.update(self.store.watch.kv_topics(entry.key))
        return entry

    def kv_delete(self, key: str) -> bool:
        if key not in self.store.kv:
            return False
        del self.store.kv[key]
        pos = bisect.bisect_left(self.store.kv_keys, key)
        del self.store.kv_keys[pos]
        idx = self._touch("tombstones")
        self.store.tombstones[key] = idx
        self.topics.add("kvs")
        self.topics.update(self.store.watch.kv_topics(key))
        return True

    # ---- sessions ------------------------------------------------------------------------------------------------

    def put_session(self, sess: Session) -> Session:
        old = self.store.sessions.get(sess.id)
        idx = self._touch("sessions")
        new = replace(sess, create_index=old.create_index if old else idx, modify_index=idx)
        self.store.sessions[sess.id] = new
        return new

    def delete_session(self, session_id: str) -> Session | None:
        """Remove a session and release (or delete, per its Behavior) the keys it holds."""
        sess = self.store.sessions.pop(session_id, None)
        if sess is None:
            return None
        self._touch("sessions")
        for entry in [e for e in self.store.kv.values() if e.session == session_id]:
            if sess.behavior == "delete":
                self.kv_delete(entry.key)
            else:
                self.kv_put(replace(entry, session=""))
        return sess
