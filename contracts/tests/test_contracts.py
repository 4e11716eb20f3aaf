"""The contracts package: version tied to the schemas, reading and replying helpers."""

from __future__ import annotations

from email_channels.blobstore import MemoryBlobStore
from email_channels.events import Address, EmailFlags, RoutedEmail, RoutingReason, SourceIdentity
from email_channels_contracts import (
    CAMPAIGN_HEADER,
    SCHEMA_FINGERPRINT,
    campaign_of,
    needs_no_answer,
    outbound_id_for,
    raw_mime,
    reply_subject,
    reply_to,
)
from email_channels_contracts.fingerprint import schema_fingerprint


def routed(**changes: object) -> RoutedEmail:
    base: dict[str, object] = {
        "email_id": "e-1",
        "channel_id": "ch-1",
        "campaign_id": "support",
        "reason": RoutingReason(kind="default"),
        "conversation_id": "conv-1",
        "message_id": "<m1@customer.example>",
        "references": ["<m0@customer.example>"],
        "from": Address(name="Alice", address="alice@customer.example"),
        "subject": "Where is my order?",
        "source": SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=7),
    }
    base.update(changes)
    return RoutedEmail.model_validate(base)


def test_the_package_version_moves_with_the_schemas() -> None:
    """A model change that alters a topic's schema fails here until the version is bumped."""
    current = schema_fingerprint()
    assert current == SCHEMA_FINGERPRINT, (
        "the topic schemas changed: bump __version__ in "
        "contracts/src/email_channels_contracts/_version.py and set "
        f"SCHEMA_FINGERPRINT = {current!r}"
    )


def test_a_reply_is_threaded_addressed_and_keyed_for_idempotency() -> None:
    """reply_to answers From in the same conversation, with In-Reply-To and References set."""
    outbound = reply_to(routed(), purpose="ack", text_body="Thanks")
    assert [a.address for a in outbound.to] == ["alice@customer.example"]
    assert outbound.channel_id == "ch-1"
    assert outbound.conversation_id == "conv-1"
    assert outbound.subject == "Re: Where is my order?"
    assert outbound.in_reply_to == "<m1@customer.example>"
    assert outbound.references == ["<m0@customer.example>", "<m1@customer.example>"]
    assert outbound.outbound_id == outbound_id_for("e-1", "ack")
    assert reply_to(routed(), purpose="ack").outbound_id == outbound.outbound_id
    assert reply_to(routed(), purpose="survey").outbound_id != outbound.outbound_id


def test_reply_to_header_wins_over_from() -> None:
    """A Reply-To address is answered instead of From."""
    email = routed(reply_to=[Address(address="desk@customer.example")])
    assert [a.address for a in reply_to(email, purpose="ack").to] == ["desk@customer.example"]


def test_subject_prefix_is_not_stacked_and_stays_on_one_line() -> None:
    """'Re:' is added once; a subject carrying line breaks becomes one line."""
    assert reply_subject("RE: hello") == "RE: hello"
    assert reply_subject("AW: hallo") == "AW: hallo"
    assert reply_subject("a\r\nBcc: x@evil.example") == "Re: a Bcc: x@evil.example"
    assert reply_subject(None) == "Re:"


def test_the_campaign_is_read_from_the_record_header() -> None:
    """campaign_of needs only the record headers, not the JSON value."""
    assert campaign_of([(CAMPAIGN_HEADER, b"billing")]) == "billing"
    assert campaign_of([("other", b"x")]) is None
    assert campaign_of(None) is None


def test_auto_replies_bounces_and_loops_need_no_answer() -> None:
    """Every flag that makes an automatic answer dangerous is honoured."""
    assert not needs_no_answer(routed())
    assert needs_no_answer(routed(flags=EmailFlags(auto_reply=True)))
    assert needs_no_answer(routed(flags=EmailFlags(bounce=True)))
    assert needs_no_answer(routed(flags=EmailFlags(loop=True)))


async def test_raw_mime_is_resolved_through_the_blob_store() -> None:
    """A claim-check reference is read back, byte for byte, through the store interface."""
    store = MemoryBlobStore()
    ref = await store.put(b"Subject: hi\r\n\r\nbody\r\n")
    assert await raw_mime(routed(raw_ref=ref), store) == b"Subject: hi\r\n\r\nbody\r\n"
    assert await raw_mime(routed(), store) is None
