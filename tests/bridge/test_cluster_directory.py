"""`Directory`: one holder per device, taken over by the next, released only by its holder,
newest wins when asked, and a holder that goes away takes its devices with it."""

from __future__ import annotations

from ironcore.bridge.cluster.directory import Directory, Entry


def test_a_device_taken_over_says_who_held_it() -> None:
    directory = Directory()
    assert directory.take(7, "a", 1.0) is None
    assert directory.take(7, "b", 2.0) == Entry("a", 1.0)
    assert directory.get(7) == Entry("b", 2.0)
    assert 7 in directory and 8 not in directory and len(directory) == 1


def test_only_the_holder_releases_a_device() -> None:
    directory = Directory()
    directory.take(7, "a", 1.0)
    directory.take(7, "b", 2.0)
    assert directory.release(7, "a") is False  # a's connection going away late
    assert directory.get(7) == Entry("b", 2.0)
    assert directory.release(7, "b") is True
    assert directory.get(7) is None and directory.release(7, "b") is False


def test_newer_than_compares_connect_times() -> None:
    directory = Directory()
    assert directory.newer_than(7, 1.0) is False  # nobody holds it
    directory.take(7, "a", 5.0)
    assert directory.newer_than(7, 4.0) is True  # a claim from before loses
    assert directory.newer_than(7, 5.0) is False  # a tie goes to the claim
    assert directory.newer_than(7, 6.0) is False


def test_a_holder_that_goes_away_takes_its_devices_with_it() -> None:
    directory = Directory()
    for num_id in range(6):
        directory.take(num_id, "a" if num_id % 2 else "b", float(num_id))
    assert sorted(directory.drop_holder("a")) == [1, 3, 5]
    assert sorted(directory) == [0, 2, 4]
    assert directory.drop_holder("a") == []
