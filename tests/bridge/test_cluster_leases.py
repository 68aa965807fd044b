"""Which servers are alive: a server not heard for its lease is gone, once."""

from __future__ import annotations

from ironcore.bridge.cluster.leases import Leases


def test_a_server_not_heard_for_its_own_lease_is_gone_once() -> None:
    leases = Leases(default=10.0)
    leases.heard("a", 100.0, lease=1.0)
    leases.heard("b", 100.0)  # no heartbeat yet: the default lease
    assert leases.expired(100.9) == []
    assert leases.expired(101.1) == ["a"]
    assert "a" not in leases and "b" in leases
    assert leases.expired(105.0) == []
    assert leases.expired(110.1) == ["b"]
    assert leases.expired(200.0) == []


def test_hearing_anything_renews_the_lease_a_heartbeat_named() -> None:
    leases = Leases(default=10.0)
    leases.heard("a", 100.0, lease=1.0)
    leases.heard("a", 100.8)  # a `Connected`, say: the same lease of 1 s
    assert leases.expired(101.5) == []
    assert leases.expired(101.9) == ["a"]


def test_after_this_servers_own_outage_every_lease_starts_again() -> None:
    leases = Leases(default=10.0)
    leases.heard("a", 100.0, lease=1.0)
    leases.heard("b", 100.0, lease=2.0)
    leases.renew_all(150.0)  # heard nobody meanwhile: says nothing of them
    assert leases.expired(150.9) == []
    assert leases.expired(151.5) == ["a"]
    assert leases.expired(152.5) == ["b"]


def test_a_server_heard_after_its_lease_expired_is_said_to_be_back_once() -> None:
    leases = Leases(default=10.0)
    assert leases.heard("a", 100.0, lease=1.0) is False
    assert leases.expired(102.0) == ["a"]
    assert leases.heard("a", 103.0) is True  # only slow: its lease of 1 s is forgotten
    assert leases.heard("a", 104.0) is False
    assert leases.expired(113.5) == []
    assert leases.expired(114.5) == ["a"]
