"""Routing rules: first matching filter wins, else the default campaign, else unroutable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from email_channels.events import Address, ChannelConfig, ChannelFilters, Filter, HeaderCondition
from router.header_fields import VALUE_LIMIT, header_fields
from router.parsing import ParsedEmail
from router.rules import MatchText as Text
from router.rules import Unroutable, matches, route, wanted_headers

CHANNEL = ChannelConfig(id="ch-1", name="Support", default_campaign_id="support")


def email(
    *,
    sender: str = "alice@customer.example",
    name: str | None = None,
    subject: str = "",
    body: str = "",
) -> ParsedEmail:
    return ParsedEmail(
        from_=Address(name=name, address=sender), subject=subject, text_body=body or None
    )


def filters(*rules: Filter) -> ChannelFilters:
    return ChannelFilters(channel_id=CHANNEL.id, filters=list(rules))


def test_no_filters_routes_to_the_default_campaign() -> None:
    """Without filters (or with none matching) the channel's default campaign is used."""
    decision = route(email(subject="Hello"), None, CHANNEL)
    assert decision.campaign_id == "support"
    assert decision.reason.kind == "default"
    assert decision.reason.filter_id is None

    decision = route(
        email(subject="Hello"),
        filters(Filter(id="f1", campaign_id="billing", subject_keywords=["invoice"])),
        CHANNEL,
    )
    assert decision.campaign_id == "support"


def test_without_default_campaign_an_unmatched_email_is_unroutable() -> None:
    """No default campaign and no matching filter -> a permanent error that names the channel."""
    channel = ChannelConfig(id="ch-2", name="No default")
    with pytest.raises(Unroutable, match="ch-2"):
        route(email(subject="Hello"), None, channel)
    assert not Unroutable.retriable


def test_a_matching_filter_routes_there_and_says_which_filter() -> None:
    rules = filters(Filter(id="f1", campaign_id="billing", subject_keywords=["Invoice"]))
    decision = route(email(subject="Your INVOICE 42"), rules, CHANNEL)
    assert decision.campaign_id == "billing"
    assert decision.reason.kind == "filter"
    assert decision.reason.filter_id == "f1"


def test_the_first_matching_filter_wins() -> None:
    rules = filters(
        Filter(id="f1", campaign_id="sales", body_keywords=["quote"]),
        Filter(id="f2", campaign_id="billing", subject_keywords=["invoice"]),
        Filter(id="f3", campaign_id="other", subject_keywords=["invoice"]),
    )
    decision = route(email(subject="invoice", body="no match"), rules, CHANNEL)
    assert decision.reason.filter_id == "f2"
    decision = route(email(subject="invoice", body="a QUOTE please"), rules, CHANNEL)
    assert decision.reason.filter_id == "f1"


def test_keywords_only_match_their_own_field() -> None:
    rule = Filter(id="f", campaign_id="c", sender_keywords=["vip.example"])
    assert matches(rule, Text.of(email(sender="boss@vip.example")))
    assert not matches(rule, Text.of(email(subject="vip.example", body="vip.example")))
    by_name = Filter(id="f", campaign_id="c", sender_keywords=["acme corp"])
    assert matches(by_name, Text.of(email(name="ACME Corp Purchasing")))


def test_any_keyword_of_any_field_is_enough() -> None:
    rule = Filter(
        id="f", campaign_id="c", subject_keywords=["refund", "return"], body_keywords=["broken"]
    )
    assert matches(rule, Text.of(email(subject="Return label")))
    assert matches(rule, Text.of(email(body="it arrived BROKEN")))
    assert not matches(rule, Text.of(email(subject="hello", body="thanks")))


def test_a_filter_without_criteria_never_matches() -> None:
    """An empty filter must not swallow the channel's mail; empty keywords are ignored."""
    assert not matches(Filter(id="f", campaign_id="c"), Text.of(email(subject="x", body="y")))
    blank = Filter(id="f", campaign_id="c", subject_keywords=[""])
    assert not matches(blank, Text.of(email(subject="anything")))


def test_all_of_requires_every_word_somewhere() -> None:
    rule = Filter(id="f", campaign_id="c", all_of=["order", "cancel"])
    assert matches(rule, Text.of(email(subject="Order 12", body="please CANCEL it")))
    assert not matches(rule, Text.of(email(subject="Order 12", body="where is it")))
    combined = Filter(id="f", campaign_id="c", subject_keywords=["order"], all_of=["urgent"])
    assert not matches(combined, Text.of(email(subject="order 1")))
    assert matches(combined, Text.of(email(subject="order 1", body="Urgent!")))


def test_regex_searches_subject_and_body_case_insensitively() -> None:
    rule = Filter(id="f", campaign_id="c", regex=r"order\s*#?\d{4,}")
    assert matches(rule, Text.of(email(subject="ORDER #12345")))
    assert matches(rule, Text.of(email(body="about order 98765 please")))
    assert not matches(rule, Text.of(email(subject="order #12", sender="order1234@x.example")))
    with_keyword = Filter(id="f", campaign_id="c", subject_keywords=["refund"], regex=r"\d+")
    assert not matches(with_keyword, Text.of(email(subject="refund please")))
    assert matches(with_keyword, Text.of(email(subject="refund 12")))


def test_an_invalid_regex_never_matches() -> None:
    rule = Filter(id="f", campaign_id="c", subject_keywords=["a"], regex="([unclosed")
    assert not matches(rule, Text.of(email(subject="a ([unclosed")))
    decision = route(email(subject="a"), filters(rule), CHANNEL)
    assert decision.reason.kind == "default"


def test_html_only_mail_is_matched_on_its_visible_text() -> None:
    rule = Filter(id="f", campaign_id="c", body_keywords=["refund"])
    html = ParsedEmail(html_body="<style>.refund{}</style><p>I want a <b>ReFund</b></p>")
    assert matches(rule, Text.of(html))
    hidden = ParsedEmail(html_body="<style>.refund{}</style><p>hello</p>")
    assert not matches(rule, Text.of(hidden))


# --- properties ----------------------------------------------------------------------------------

words = st.text(alphabet="abcdefghij", min_size=1, max_size=6)


@st.composite
def filter_lists(draw: st.DrawFn) -> list[Filter]:
    count = draw(st.integers(min_value=0, max_value=6))
    return [
        Filter(
            id=f"f{i}",
            campaign_id=f"c{i}",
            sender_keywords=draw(st.lists(words, max_size=2)),
            subject_keywords=draw(st.lists(words, max_size=2)),
            body_keywords=draw(st.lists(words, max_size=2)),
            all_of=draw(st.lists(words, max_size=2)),
        )
        for i in range(count)
    ]


@given(rules=filter_lists(), subject=st.text(max_size=30), body=st.text(max_size=60))
def test_the_decision_is_the_first_filter_that_matches_on_its_own(
    rules: list[Filter], subject: str, body: str
) -> None:
    """Whatever the filters, the winner is the earliest one that matches by itself."""
    parsed = email(subject=subject, body=body)
    text = Text.of(parsed)
    decision = route(parsed, filters(*rules), CHANNEL)
    first = next((rule for rule in rules if matches(rule, text)), None)
    if first is None:
        assert decision.campaign_id == CHANNEL.default_campaign_id
        assert decision.reason.kind == "default"
    else:
        assert decision.reason.filter_id == first.id
        assert decision.campaign_id == first.campaign_id


@given(rules=filter_lists(), subject=st.text(max_size=30), extra=filter_lists())
def test_filters_after_the_winner_never_change_the_decision(
    rules: list[Filter], subject: str, extra: list[Filter]
) -> None:
    parsed = email(subject=subject)
    before = route(parsed, filters(*rules), CHANNEL)
    if before.reason.kind == "filter":
        renamed = [r.model_copy(update={"id": f"x{r.id}"}) for r in extra]
        assert route(parsed, filters(*rules, *renamed), CHANNEL) == before


@given(keyword=words, prefix=st.text(max_size=10), suffix=st.text(max_size=10))
def test_a_subject_keyword_matches_in_any_case(keyword: str, prefix: str, suffix: str) -> None:
    rule = Filter(id="f", campaign_id="c", subject_keywords=[keyword])
    assert matches(rule, Text.of(email(subject=prefix + keyword.upper() + suffix)))


def test_every_header_condition_must_hold_each_by_any_keyword() -> None:
    """Header conditions AND together; within one, any keyword; a missing header fails."""
    rule = Filter(
        id="f-h",
        campaign_id="vip",
        header_conditions=[
            HeaderCondition(header="X-Priority", keywords=["1", "urgent"]),
            HeaderCondition(header="List-Id", keywords=["vip"]),
        ],
    )
    both = {"x-priority": ["1 (highest)"], "list-id": ["<vip.shop.example>"]}
    assert matches(rule, Text.of(email(), both))
    assert not matches(rule, Text.of(email(), {"x-priority": ["1 (highest)"]}))
    assert not matches(rule, Text.of(email(), {**both, "x-priority": ["5 (lowest)"]}))
    assert not matches(rule, Text.of(email()))


def test_header_conditions_combine_with_keywords() -> None:
    """Keywords and header conditions of one filter must both hold."""
    rule = Filter(
        id="f-h",
        campaign_id="vip",
        subject_keywords=["order"],
        header_conditions=[HeaderCondition(header="List-Id", keywords=["vip"])],
    )
    listed = {"list-id": ["<vip.shop.example>"]}
    assert matches(rule, Text.of(email(subject="My order"), listed))
    assert not matches(rule, Text.of(email(subject="Hello"), listed))
    assert wanted_headers(filters(rule)) == frozenset({"list-id"})
    assert wanted_headers(None) == frozenset()


def test_header_fields_are_decoded_unfolded_and_only_the_wanted_ones() -> None:
    """Encoded words decode, folded lines unfold, names are case-insensitive, the body is not
    read as headers."""
    mime = (
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Tag: first\r\n"
        b"x-tag: second\r\n\tcontinued\r\n"
        b"\r\n"
        b"X-Tag: in the body\r\n"
    )
    fields = header_fields(mime, frozenset({"subject", "x-tag"}))
    assert fields == {"subject": ["grüsse"], "x-tag": ["first", "second continued"]}  # casefolded
    assert header_fields(mime, frozenset({"from"})) == {}


def test_header_fields_are_bounded_on_a_huge_header() -> None:
    """A multi-megabyte header line is cut, and reading it stays quick."""
    mime = b"X-Big: " + b"a" * 5_000_000 + b"\r\n\r\nbody"
    [value] = header_fields(mime, frozenset({"x-big"}))["x-big"]
    assert len(value) <= VALUE_LIMIT
