"""Index rules of the state store (consul-api.md section 2.4), tested on the store itself."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consulgw.devagent.records import Check, KVEntry, Node, Service
from consulgw.devagent.store import Store


def _store() -> Store:
    store = Store(start_index=10)
    with store.write() as tx:
        tx.put_node(Node(id="n", name="node1", address="127.0.0.1", datacenter="dc1"))
    return store


def test_every_effective_write_takes_one_index_and_noop_takes_none() -> None:
    store = _store()
    svc = Service(node="node1", id="web-1", name="web", port=80)
    with store.write() as tx:
        stored = tx.put_service(svc)
        tx.put_check(Check(node="node1", check_id="c1", name="c", service_id="web-1", service_name="web"))
    assert stored.create_index == stored.modify_index == 12 == store.index
    with store.write() as tx:
        again = tx.put_service(svc)
    assert store.index == 12
    assert again.modify_index == 12


def test_service_index_bumps_on_own_checks_and_node_checks_only() -> None:
    store = _store()
    with store.write() as tx:
        tx.put_service(Service(node="node1", id="web-1", name="web"))
        tx.put_service(Service(node="node1", id="db-1", name="db"))
    web, db = store.service_query_index("web"), store.service_query_index("db")
    with store.write() as tx:
        tx.put_check(Check(node="node1", check_id="c", name="c", service_id="web-1", service_name="web"))
    assert store.service_query_index("web") > web
    assert store.service_query_index("db") == db
    with store.write() as tx:
        tx.put_check(Check(node="node1", check_id="serfHealth", name="serf", status="passing"))
    assert store.service_query_index("db") == store.index == store.service_query_index("web")


def test_missing_service_reports_extinction_index() -> None:
    store = _store()
    with store.write() as tx:
        tx.put_service(Service(node="node1", id="web-1", name="web"))
    with store.write() as tx:
        tx.delete_service("node1", "web-1")
    gone = store.index
    with store.write() as tx:
        tx.kv_put(KVEntry(key="unrelated"))
    assert store.service_query_index("web") == gone
    assert store.service_query_index("never-existed") == gone


def test_prefix_index_uses_tombstones_and_falls_back_to_whole_kv() -> None:
    store = _store()
    with store.write() as tx:
        tx.kv_put(KVEntry(key="app/a"))
    with store.write() as tx:
        tx.kv_put(KVEntry(key="other"))
    assert store.kv_prefix_index("app/") < store.index
    with store.write() as tx:
        tx.kv_delete("app/a")
    assert store.kv_prefix_index("app/") == store.index  # the tombstone keeps it moving forward
    assert store.kv_prefix_index("never/") == store.kv_store_index() == store.index
    assert store.kv_prefix_index("") == store.kv_store_index()


def test_kv_put_keeps_create_index() -> None:
    store = _store()
    with store.write() as tx:
        first = tx.kv_put(KVEntry(key="k", value=b"1"))
    with store.write() as tx:
        second = tx.kv_put(KVEntry(key="k", value=b"2"))
    assert second.create_index == first.create_index < second.modify_index


def test_deleting_a_node_removes_its_services_and_checks() -> None:
    store = _store()
    with store.write() as tx:
        tx.put_service(Service(node="node1", id="web-1", name="web"))
        tx.put_check(Check(node="node1", check_id="c", name="c", service_id="web-1"))
    with store.write() as tx:
        assert tx.delete_node("node1")
    assert not store.services
    assert not store.checks
    assert not store.nodes


_ops = st.lists(
    st.tuples(
        st.sampled_from(["put_service", "delete_service", "put_check", "delete_check", "delete_node"]),
        st.sampled_from(["n1", "n2"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["web", "db"]),
    ),
    max_size=40,
)


@given(_ops)
def test_secondary_indexes_match_a_full_scan(ops: list[tuple[str, str, str, str]]) -> None:
    store = Store(start_index=10)
    for op, node, ident, name in ops:
        with store.write() as tx:
            if node not in store.nodes:
                tx.put_node(Node(id=node, name=node, address="10.0.0.1", datacenter="dc1"))
            if op == "put_service":
                tx.put_service(Service(node=node, id=ident, name=name))
            elif op == "delete_service":
                tx.delete_service(node, ident)
            elif op == "put_check":
                sid = ident if (node, ident) in store.services else ""
                tx.put_check(Check(node=node, check_id=f"c-{ident}", name="c", service_id=sid))
            elif op == "delete_check":
                tx.delete_check(node, f"c-{ident}")
            else:
                tx.delete_node(node)
    for name in ("web", "db"):
        scan = sorted((s for s in store.services.values() if s.name == name), key=lambda s: (s.node, s.id))
        assert store.instances(name) == scan
    for node in ("n1", "n2"):
        assert store.services_on_node(node) == sorted(
            (s for (n, _), s in store.services.items() if n == node), key=lambda s: s.id
        )
        assert store.checks_on_node(node) == sorted(
            (c for (n, _), c in store.checks.items() if n == node), key=lambda c: c.check_id
        )
