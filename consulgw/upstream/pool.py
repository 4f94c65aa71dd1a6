"""Upstream pools: the runtime state of load balancing, kept outside the immutable route table.

One :class:`UpstreamPools` per gateway process, used from a single event loop (no locks). ``update`` swaps in a new
immutable member list for a service; the per-instance counters (in-flight requests, requests sent, the smooth
round-robin current weight) live in a per-service state object shared by every :class:`ServicePool` built for
that service, so they survive updates for instances that stay, and a request that picked from an older pool
still releases into the same counters. An instance that leaves keeps its counter until its last in-flight
request is released; then the counter is dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

from consulgw.errors import ConfigError
from consulgw.model.balancing import IP_HASH, LB_ALGORITHMS, LEAST_CONN
from consulgw.model.snapshot import Instance
from consulgw.upstream.balancer import (
    Available,
    Rendezvous,
    least_conn_pick,
    smooth_weighted_pick,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStats:
    """A read-only snapshot of one instance's counters (for the admin page)."""

    instance_id: str
    in_flight: int
    requests: int  # requests sent to it since it first appeared (survives pool updates)
    member: bool  # False while a departed instance finishes its in-flight requests


class _Counter:
    __slots__ = ("in_flight", "requests")

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0


class _ServiceState:
    """Mutable counters of one service, shared by all its ServicePool generations."""

    __slots__ = ("counters", "current", "members", "on_drained")

    def __init__(self, on_drained: Callable[[_ServiceState], None]) -> None:
        self.counters: dict[str, _Counter] = {}
        self.current: dict[str, int] = {}  # smooth WRR current weights, members only
        self.members: frozenset[str] = frozenset()
        self.on_drained = on_drained

    def set_members(self, ids: frozenset[str]) -> None:
        self.members = ids
        for gone in [i for i in self.current if i not in ids]:
            del self.current[gone]
        for gone in [i for i, c in self.counters.items() if i not in ids and c.in_flight <= 0]:
            del self.counters[gone]
        if not ids and not self.counters:
            self.on_drained(self)

    def acquire(self, instance_id: str) -> None:
        counter = self.counters.get(instance_id)
        if counter is None:
            counter = self.counters[instance_id] = _Counter()
        counter.in_flight += 1
        counter.requests += 1

    def release(self, instance_id: str) -> None:
        counter = self.counters.get(instance_id)
        if counter is None or counter.in_flight <= 0:
            return  # unknown or already released: never go negative
        counter.in_flight -= 1
        if counter.in_flight == 0 and instance_id not in self.members:
            del self.counters[instance_id]
            if not self.members and not self.counters:
                self.on_drained(self)

    def in_flight(self) -> dict[str, int]:
        return {i: c.in_flight for i, c in self.counters.items()}

    def stats(self) -> Mapping[str, InstanceStats]:
        idle = _Counter()
        return MappingProxyType(
            {
                i: InstanceStats(
                    instance_id=i,
                    in_flight=(c := self.counters.get(i, idle)).in_flight,
                    requests=c.requests,
                    member=i in self.members,
                )
                for i in sorted(self.members | self.counters.keys())
            }
        )


class ServicePool:
    """One service's members (instances with weight > 0, sorted by id) and its balancer.

    The member list is immutable; picks and in-flight counting go to the service's shared counters.
    """

    __slots__ = ("_algorithm", "_by_id", "_members", "_rendezvous", "_rng", "_service", "_state")

    def __init__(
        self,
        *,
        service: str,
        members: tuple[Instance, ...],
        algorithm: str,
        rng: random.Random,
        state: _ServiceState,
    ) -> None:
        self._service = service
        self._members = members
        self._by_id = {m.id: m for m in members}
        self._algorithm = algorithm
        self._rng = rng
        self._state = state
        self._rendezvous = Rendezvous.build(members) if algorithm == IP_HASH else None

    @property
    def service(self) -> str:
        return self._service

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def members(self) -> tuple[Instance, ...]:
        return self._members

    def __len__(self) -> int:
        return len(self._members)

    def member(self, instance_id: str) -> Instance | None:
        """The member with this id, if it is one (weight > 0)."""
        return self._by_id.get(instance_id)

    def pick(
        self, client_key: str, *, exclude: frozenset[str] = frozenset(), available: Available | None = None
    ) -> Instance | None:
        """Choose an instance, or None when no member is left after ``exclude`` and ``available``.

        ``client_key`` (the client IP) only matters for ``ip_hash``. ``exclude`` holds instance ids a retry has
        already tried. ``available`` is called lazily, on the candidate about to be returned, best first.
        Call :meth:`acquire` (or use :meth:`lease`) for the returned instance before the next ``await``.
        """
        members = self._members
        if len(members) == 1 and not exclude:  # the common single-instance case: every algorithm agrees
            only = members[0]
            return only if available is None or available(only) else None
        if self._rendezvous is not None:
            return self._rendezvous.pick(client_key, exclude=exclude, available=available)
        if exclude:
            members = tuple(m for m in members if m.id not in exclude)
        if self._algorithm == LEAST_CONN:
            return least_conn_pick(members, self._state.in_flight(), self._rng, available=available)
        return smooth_weighted_pick(members, self._state.current, available=available)

    def acquire(self, instance_id: str) -> None:
        """Count a request as in flight to ``instance_id`` (and in its request total)."""
        self._state.acquire(instance_id)

    def release(self, instance_id: str) -> None:
        """End a request counted by :meth:`acquire`. Safe after the instance left the pool, and idempotent at 0."""
        self._state.release(instance_id)

    @contextmanager
    def lease(self, instance_id: str) -> Iterator[None]:
        """``acquire`` now, ``release`` on exit (also on error or cancellation)."""
        self._state.acquire(instance_id)
        try:
            yield
        finally:
            self._state.release(instance_id)

    def stats(self) -> Mapping[str, InstanceStats]:
        """Counters of every member (zeros if never picked) and of departed instances still finishing requests."""
        return self._state.stats()


class UpstreamPools:
    """Every routed service's pool. Single event loop; ``update`` is called by the snapshot consumer."""

    __slots__ = ("_pools", "_rng", "_states")

    def __init__(self, *, rng: random.Random) -> None:
        self._rng = rng
        self._pools: dict[str, ServicePool] = {}
        self._states: dict[str, _ServiceState] = {}

    def update(self, service: str, instances: Sequence[Instance], algorithm: str) -> None:
        """Replace ``service``'s members with ``instances`` that have weight > 0 (first of each id wins)."""
        if algorithm not in LB_ALGORITHMS:
            raise ConfigError(
                f"balancer for service {service!r}: {algorithm!r} is not one of {', '.join(LB_ALGORITHMS)}"
            )
        by_id: dict[str, Instance] = {}
        for inst in instances:
            if inst.weight > 0:
                by_id.setdefault(inst.id, inst)
        members = tuple(by_id[i] for i in sorted(by_id))
        state = self._states.get(service)
        if state is None:
            state = self._states[service] = _ServiceState(self._drop_state_for(service))
        self._pools[service] = ServicePool(
            service=service, members=members, algorithm=algorithm, rng=self._rng, state=state
        )
        state.set_members(frozenset(by_id))

    def remove(self, service: str) -> None:
        """Forget ``service``: new picks find no pool; requests in flight still release their counters."""
        self._pools.pop(service, None)
        state = self._states.get(service)
        if state is not None:
            state.set_members(frozenset())

    def pool(self, service: str) -> ServicePool | None:
        return self._pools.get(service)

    def services(self) -> frozenset[str]:
        return frozenset(self._pools)

    def stats(self, service: str) -> Mapping[str, InstanceStats]:
        """Per-instance counters of ``service`` (empty when unknown)."""
        state = self._states.get(service)
        return state.stats() if state is not None else MappingProxyType({})

    def _drop_state_for(self, service: str) -> Callable[[_ServiceState], None]:
        def drop(state: _ServiceState) -> None:
            if self._states.get(service) is state and service not in self._pools:
                del self._states[service]

        return drop
