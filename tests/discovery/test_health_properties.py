"""Properties of instance_from_entry: any JSON is either an Instance or a DiscoveryError, and valid entries keep
their fields."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consulgw.discovery.health import instance_from_entry
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import Health, Instance

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

STATUSES = st.sampled_from(["passing", "warning", "critical"])
CHECK_IDS = st.sampled_from(["serfHealth", "service:x", "ttl", "_node_maintenance", "_service_maintenance:x"])
RANK = {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2, Health.MAINTENANCE: 3}


def valid_entry(
    node: str, sid: str, port: int, tags: list[str], meta: dict[str, str], checks: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "Node": {"Node": node, "Address": "10.1.1.1"},
        "Service": {"ID": sid, "Service": "svc", "Tags": tags, "Address": "", "Port": port, "Meta": meta},
        "Checks": [{"CheckID": cid, "Status": status} for cid, status in checks],
    }


@given(
    node=st.text(min_size=1, max_size=10),
    sid=st.text(min_size=1, max_size=10),
    port=st.integers(0, 65535),
    tags=st.lists(st.text(max_size=10), max_size=5),
    meta=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    checks=st.lists(st.tuples(CHECK_IDS, STATUSES), max_size=5),
)
def test_valid_entries_keep_their_fields(
    node: str, sid: str, port: int, tags: list[str], meta: dict[str, str], checks: list[tuple[str, str]]
) -> None:
    inst = instance_from_entry(valid_entry(node, sid, port, tags, meta, checks))
    assert inst.id == f"{node}/{sid}"
    assert (inst.port, inst.tags, dict(inst.meta), inst.address) == (port, tuple(tags), meta, "10.1.1.1")
    if any(cid == "_node_maintenance" or cid.startswith("_service_maintenance:") for cid, _ in checks):
        assert inst.health is Health.MAINTENANCE
    else:
        worst = max((Health(status) for _, status in checks), key=RANK.__getitem__, default=Health.PASSING)
        assert inst.health is worst


FIELDS = [
    ("Node",),
    ("Node", "Node"),
    ("Node", "Address"),
    ("Service",),
    ("Service", "ID"),
    ("Service", "Service"),
    ("Service", "Tags"),
    ("Service", "Address"),
    ("Service", "Port"),
    ("Service", "Meta"),
    ("Service", "Weights"),
    ("Checks",),
]


@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_json_in_any_field_is_an_instance_or_a_discovery_error(field: tuple[str, ...], value: Any) -> None:
    raw = copy.deepcopy(valid_entry("n", "s", 80, ["gw"], {}, [("serfHealth", "passing")]))
    target = raw
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    outcome: Instance | DiscoveryError
    try:
        outcome = instance_from_entry(raw)
    except DiscoveryError as exc:
        outcome = exc
    assert isinstance(outcome, Instance) or "health entry" in str(outcome)


@given(value=json_values)
def test_any_json_document_is_an_instance_or_a_discovery_error(value: Any) -> None:
    with contextlib.suppress(DiscoveryError):  # anything else (KeyError, TypeError...) fails the test
        instance_from_entry(value)
