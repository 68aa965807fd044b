"""A binding's members: the kinds ironcore knows, each with a value of its form; anything else
is named as the problem, never accepted to grant nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ironcore.registry.iam import MEMBER_KINDS, is_email, member_problem


@pytest.mark.parametrize(
    "member",
    [
        "user:alice@example.com",
        "user:Alice.Smith+ci@Example.co.uk",
        "group:ops@example.com",
        "serviceAccount:contractor-acme@my-project.iam.gserviceaccount.com",
        "adminToken:4fd55f954a5b",
    ],
)
def test_members_of_each_kind(member: str) -> None:
    assert member_problem(member) == ""


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("alice@example.com", "is not one of serviceAccount:..., adminToken:..."),
        ("user:", "is not one of"),
        ("domain:example.com", "is not one of"),
        ("user:alice", "a user is named by an email address"),
        ("group:ops@", "a group is named by an email address"),
        ("serviceAccount:sa@localhost", "a serviceAccount is named by an email address"),
        ("user:\u212aevin@example.com", "email address"),  # the Kelvin sign lower-cases to k
        ("user:" + "a" * 250 + "@example.com", "email address"),
        ("adminToken:4FD55F954A5B", "the 12 hex digits after ic_"),
        ("adminToken:4fd55f95", "the 12 hex digits after ic_"),
    ],
)
def test_members_that_name_nobody_are_refused(member: str, problem: str) -> None:
    assert problem in member_problem(member)


@given(st.text(max_size=300))
def test_every_text_is_judged_and_an_accepted_one_has_a_known_kind(text: str) -> None:
    problem = member_problem(text)
    if not problem:
        kind, _, value = text.partition(":")
        assert kind in MEMBER_KINDS and value and text.isascii()
    else:
        assert repr(text[:100]) in problem


@given(st.emails())
def test_email_addresses_hypothesis_makes_are_emails(email: str) -> None:
    # hypothesis' addresses may be longer than SMTP allows; those are refused by length alone.
    assert is_email(email) == (len(email) <= 254)
