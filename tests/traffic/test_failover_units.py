"""The failover rule (``decide``), its board (runtime state, injected clock) and the remote instance view, without
sockets: one table row per situation."""

from __future__ import annotations

import random
from types import MappingProxyType

import pytest

from consulgw.model.snapshot import Health, Instance, ServiceSnapshot
from consulgw.policy.model import FailoverPolicy
from consulgw.traffic.failover import FailoverBoard, Serving, decide, remote_instances
from consulgw.upstream.pool import UpstreamPools


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used here
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


POLICY = FailoverPolicy(datacenters=("dc2", "dc3"), min_healthy=2, failback_after=30.0)


@pytest.mark.parametrize(
    ("previous", "local", "remote", "now", "expected"),
    [
        pytest.param(Serving(), 2, {"dc2": 5}, 0.0, Serving(), id="local-healthy-stays-local"),
        pytest.param(Serving(), 1, {"dc2": 2, "dc3": 9}, 0.0, Serving("dc2"), id="below-min-first-listed-with-enough"),
        pytest.param(Serving(), 0, {"dc2": 1, "dc3": 2}, 0.0, Serving("dc3"), id="skips-a-dc-below-min"),
        pytest.param(Serving(), 0, {"dc2": 1, "dc3": 0}, 0.0, Serving(), id="nobody-has-enough-stays-local"),
        pytest.param(Serving(), 0, {}, 0.0, Serving(), id="no-remote-answers-yet"),
        pytest.param(Serving("dc2"), 0, {"dc2": 3}, 5.0, Serving("dc2"), id="failed-over-stays"),
        pytest.param(Serving("dc2"), 2, {"dc2": 3}, 5.0, Serving("dc2", 5.0), id="local-back-starts-the-wait"),
        pytest.param(Serving("dc2", 5.0), 2, {"dc2": 3}, 34.9, Serving("dc2", 5.0), id="still-waiting"),
        pytest.param(Serving("dc2", 5.0), 2, {"dc2": 3}, 35.0, Serving(), id="waited-failback-after-fails-back"),
        pytest.param(Serving("dc2", 5.0), 1, {"dc2": 3}, 20.0, Serving("dc2"), id="a-dip-restarts-the-wait"),
        pytest.param(Serving("dc2"), 0, {"dc2": 0, "dc3": 4}, 1.0, Serving("dc3"), id="dc2-dies-moves-to-dc3"),
        pytest.param(Serving("dc3"), 0, {"dc2": 4, "dc3": 4}, 1.0, Serving("dc2"), id="prefers-list-order-again"),
        pytest.param(Serving("dc2"), 0, {"dc2": 0, "dc3": 0}, 1.0, Serving("dc2"), id="all-down-keeps-the-last"),
        pytest.param(Serving("dc9"), 0, {"dc2": 0}, 1.0, Serving(), id="all-down-last-no-longer-listed-local"),
        pytest.param(Serving("dc2", 1.0), 3, {"dc2": 0, "dc3": 1}, 2.0, Serving(), id="remote-gone-local-ok-back-now"),
    ],
)
def test_decide(previous: Serving, local: int, remote: dict[str, int], now: float, expected: Serving) -> None:
    assert decide(POLICY, previous, local, remote, now) == expected


def test_zero_failback_after_comes_back_at_once() -> None:
    policy = FailoverPolicy(datacenters=("dc2",), failback_after=0.0)
    assert decide(policy, Serving("dc2"), 1, {"dc2": 1}, 7.0) == Serving()


def _inst(iid: str, dc: str, *, health: Health = Health.PASSING, wan: str = "") -> Instance:
    return Instance(id=iid, service="web", service_id=iid, node="n", address="10.0.0.1", port=80, health=health,
                    datacenter=dc, wan_address=wan, wan_port=8443 if wan else 0)  # fmt: skip


def test_remote_instances_are_renamed_and_reached_over_wan_or_lan() -> None:
    remote = MappingProxyType({("web", "dc2"): ServiceSnapshot(name="web", index=3,
                                                                 instances=(_inst("n/a", "dc2", wan="203.0.113.9"),
                                                                            _inst("n/b", "dc2")))})  # fmt: skip
    wan = remote_instances("web", FailoverPolicy(datacenters=("dc2", "dc3")), remote)
    assert list(wan) == ["dc2"]  # dc3 has not answered
    assert [(i.id, i.address, i.port) for i in wan["dc2"]] == [("dc2:n/a", "203.0.113.9", 8443),
                                                               ("dc2:n/b", "10.0.0.1", 80)]  # fmt: skip
    lan = remote_instances("web", FailoverPolicy(datacenters=("dc2",), address="lan"), remote)
    assert [(i.id, i.address, i.port) for i in lan["dc2"]] == [("dc2:n/a", "10.0.0.1", 80), ("dc2:n/b", "10.0.0.1", 80)]
    assert remote_instances("web", None, remote) == {}


def test_board_switches_and_fails_back_on_the_injected_clock() -> None:
    clock = FakeClock()
    switches: list[tuple[str, str, str]] = []
    board = FailoverBoard(clock, on_switch=lambda *args: switches.append(args))
    pools = UpstreamPools(rng=random.Random(1), clock=clock)
    policy = FailoverPolicy(datacenters=("dc2",), failback_after=10.0)
    remote = {"dc2": (_inst("dc2:n/r", "dc2"),)}
    pools.update("web", (_inst("n/l", "dc1"),), "round_robin", remote=remote, datacenter="dc1")
    assert board.serving("web", policy, pools.pool("web")) == ""
    pools.update("web", (_inst("n/l", "dc1", health=Health.CRITICAL),), "round_robin", remote=remote)
    assert board.serving("web", policy, pools.pool("web")) == "dc2"
    pool = pools.pool("web")
    assert pool is not None
    remote_pool = pool.remote("dc2")
    assert remote_pool is not None
    assert [m.id for m in remote_pool.members] == ["dc2:n/r"]
    pools.update("web", (_inst("n/l", "dc1"),), "round_robin", remote=remote)
    assert board.serving("web", policy, pools.pool("web")) == "dc2"
    clock.advance(9.9)
    assert board.serving("web", policy, pools.pool("web")) == "dc2"
    clock.advance(0.1)
    assert board.serving("web", policy, pools.pool("web")) == ""
    assert switches == [("web", "", ""), ("web", "", "dc2"), ("web", "dc2", "")]  # first: who serves
    pools.update("web", (), "round_robin", remote=remote)  # every local instance deregistered
    assert board.serving("web", policy, pools.pool("web")) == "dc2"
    board.forget("web")  # the policy lost its failover section: served locally again, and reported
    assert switches[-1] == ("web", "dc2", "")
    assert board.state("web") == Serving()
