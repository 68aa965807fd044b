"""`--public-url`: what the discovery document gives clients as its rootUrl."""

from __future__ import annotations

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st

from ironcore.cli.main import public_url_option

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)


@given(
    st.sampled_from(["http", "https"]),
    hosts,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from(["", "/", "/iot", "/iot/"]),
)
def test_urls_get_one_trailing_slash(scheme: str, host: str, port: int | None, path: str) -> None:
    netloc = host if port is None else f"{host}:{port}"
    assert public_url_option(f"{scheme}://{netloc}{path}") == (
        f"{scheme}://{netloc}{path.rstrip('/')}/"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("iot.example.com", "not an http(s)://host[:port]/ URL"),
        ("ftp://iot.example.com/", "not an http(s)://host[:port]/ URL"),
        ("https:///", "not an http(s)://host[:port]/ URL"),
        ("https://iot.example.com/?a=b", "has a query, fragment or user"),
        ("https://user@iot.example.com/", "has a query, fragment or user"),
        ("https://iot.example.com:99999/", "out of range"),
    ],
)
def test_refusals_name_the_problem(value: str, problem: str) -> None:
    with pytest.raises(typer.BadParameter) as caught:
        public_url_option(value)
    assert problem in str(caught.value)


def test_empty_means_each_request_s_own() -> None:
    assert public_url_option("") == ""
