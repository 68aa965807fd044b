"""Failed authentication slowed per client address (`access.backoff`): the core's properties,
and a real server under a storm of wrong tokens from one address (127.0.0.2: Linux routes all
of 127/8 to lo) while valid tokens from another are served, on REST and gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironcore.access.backoff import Backoff, grpc_peer_address
from tests.conftest import Server

DEVICE_MANAGER = "/google.cloud.iot.v1.DeviceManager/ListDeviceRegistries"
REGISTRIES = "/v1/projects/p1/locations/us-central1/registries"
# Storms are bounded in count, whatever happens.
MOST = 200

addresses = st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2", "2001:db9::1"])
steps = st.lists(
    st.tuples(addresses, st.booleans(), st.floats(min_value=0, max_value=30)), max_size=80
)


# No deadline: a loaded test machine is not what these properties are about.
@settings(deadline=None)
@given(steps)
def test_only_failing_addresses_wait_and_never_beyond_the_cap(
    history: list[tuple[str, bool, float]],
) -> None:
    backoff = Backoff(free=3, base=0.5, cap=8.0, forget=60.0, max_addresses=3)
    now = 0.0
    failing: set[str] = set()
    for address, fails, later in history:
        now += later
        if fails:
            waited = backoff.failed(address, now)
            failing.add(address)
            assert 0 <= waited <= 8.0
        else:
            backoff.succeeded(address)
        assert len(backoff) <= 3
        for other in ("10.0.0.9", "2001:db7::1", ""):
            assert backoff.wait(other, now) == 0
        for seen in failing:
            assert 0 <= backoff.wait(seen, now) <= 8.0
        if not fails:
            assert backoff.wait(address, now) == 0
            # The same /64 counts as one address.
            if address.startswith("2001:db8::"):
                assert backoff.wait("2001:db8::ffff", now) == 0


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=6), st.integers(min_value=1, max_value=400))
def test_free_failures_then_doubling_up_to_the_cap(free: int, storm: int) -> None:
    backoff = Backoff(free=free, base=1.0, cap=60.0)
    now = 0.0
    waits = []
    for _ in range(storm):
        waits.append(backoff.failed("192.0.2.1", now))
        # The next failure comes once the address may be heard again.
        now += max(waits[-1], 0.001)
    assert waits[:free] == [0.0] * min(free, storm)
    beyond = waits[free:]
    assert beyond == pytest.approx([min(60.0, 2.0**n) for n in range(len(beyond))])
    # Without a failure for long enough, the address starts again from nothing.
    assert backoff.wait("192.0.2.1", now + 601) == 0
    assert backoff.failed("192.0.2.1", now + 601) == (0.0 if free else 1.0)


def test_peer_addresses_of_grpc() -> None:
    assert grpc_peer_address("ipv4:127.0.0.2:5000") == "127.0.0.2"
    assert grpc_peer_address("ipv6:[::1]:5000") == "::1"
    assert grpc_peer_address("unix:/tmp/socket") == ""


def test_the_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base=2.0, cap=1.0)


def from_address(server: Server, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, timeout=10)


def secure_channel(server: Server) -> grpc.Channel:
    """A channel to `server`'s gRPC API, trusting its CA."""
    root = server.data_dir.joinpath("tls", "ca.crt").read_bytes()
    return grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", grpc.ssl_channel_credentials(root))


@pytest.fixture
def channel(grpc_server: Server) -> Iterator[grpc.Channel]:
    with secure_channel(grpc_server) as opened:
        yield opened


def grpc_code(channel: grpc.Channel, token: str, *metadata: tuple[str, str]) -> grpc.StatusCode:
    """The status of a ListDeviceRegistries call with `token` (and `metadata`)."""
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(DEVICE_MANAGER)
    parent = b"projects/p1/locations/us-central1"
    request = b"\n" + bytes([len(parent)]) + parent
    try:
        stub(request, metadata=(("authorization", f"Bearer {token}"), *metadata), timeout=10)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.databases("sqlite")
def test_a_wrong_token_storm_is_slowed_and_other_addresses_are_served(
    grpc_server: Server, channel: grpc.Channel
) -> None:
    valid = {"Authorization": f"Bearer {grpc_server.token}"}
    wrong = {"Authorization": "Bearer not-a-token"}
    with (
        from_address(grpc_server, "127.0.0.2") as storm,
        from_address(grpc_server, "127.0.0.1") as other,
    ):
        statuses: list[int] = []
        retry_after = 0
        while retry_after < 2 and len(statuses) < MOST:
            response = storm.get(REGISTRIES, headers=wrong)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
                retry_after = int(response.headers["retry-after"])
                if retry_after < 2:
                    # Heard again once the wait is over: the next failure doubles it.
                    time.sleep(retry_after)
            # Valid tokens from elsewhere, on both wires, are never slowed.
            assert other.get(REGISTRIES, headers=valid).status_code == 200
            assert grpc_code(channel, grpc_server.token) == grpc.StatusCode.OK
        assert statuses[:6] == [401] * 6, statuses
        assert retry_after >= 2, statuses
        # The storming address is refused before its token is looked at: a valid one too.
        # (gRPC, which the test reaches from 127.0.0.1 only, has a storm of its own below.)
        refused = storm.get(REGISTRIES, headers=valid)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
    log = grpc_server.log.read_text()
    assert "failed authentications from 127.0.0.2" in log
    assert "not-a-token" not in log


@pytest.mark.databases("sqlite")
def test_a_grpc_storm_is_resource_exhausted(grpc_server: Server, channel: grpc.Channel) -> None:
    codes: list[grpc.StatusCode] = []
    while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < MOST:
        codes.append(grpc_code(channel, "not-a-token"))
    assert codes[:6] == [grpc.StatusCode.UNAUTHENTICATED] * 6, codes
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    with from_address(grpc_server, "127.0.0.2") as elsewhere:
        response = elsewhere.get(
            REGISTRIES, headers={"Authorization": f"Bearer {grpc_server.token}"}
        )
        assert response.status_code == 200, response.text
