"""compose(): what the recipient's mail client will see, and what the envelope carries."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

import pytest
from pydantic import ValidationError

from email_channels.events import OutboundEmail
from sender.compose import compose, make_message_id, thread_references
from sender.errors import MessageRejected


def parsed(composed):
    """Round-trip through bytes, as the receiving server would see the message."""
    return email.message_from_bytes(composed.data.replace(b"\r\n", b"\n"), policy=policy.default)


def test_bcc_is_in_the_envelope_but_nowhere_in_the_message(make_outbound, make_channel):
    """Bcc recipients get the mail (envelope) but no recipient can see them (no header)."""
    outbound = make_outbound(
        cc=[{"address": "boss@customer.example"}],
        bcc=[{"name": "Audit", "address": "audit@shop.example"}],
    )
    composed = compose(outbound, make_channel())

    assert composed.envelope.recipients == (
        "ada@customer.example",
        "boss@customer.example",
        "audit@shop.example",
    )
    raw = composed.message.as_bytes()
    assert b"audit@shop.example" not in raw
    assert "Bcc" not in parsed(composed)
    assert parsed(composed)["Cc"] == "boss@customer.example"


def test_envelope_recipients_are_deduplicated(make_outbound, make_channel):
    outbound = make_outbound(
        cc=[{"address": "ADA@customer.example"}], bcc=[{"address": "ada@customer.example"}]
    )
    assert compose(outbound, make_channel()).envelope.recipients == ("ada@customer.example",)


def test_message_id_is_the_same_on_every_retry(make_outbound, make_channel):
    """A retry re-sends the same Message-ID, so receivers can drop a duplicate."""
    outbound = make_outbound(outbound_id="out:42@campaign")
    first = compose(outbound, make_channel())
    again = compose(
        OutboundEmail.model_validate_json(outbound.model_dump_json(by_alias=True)),
        make_channel(revision=7),
    )

    assert first.message_id == again.message_id
    assert parsed(first)["Message-ID"] == first.message_id
    assert first.message_id.endswith("@shop.example>")
    assert ":" not in first.message_id  # a raw outbound id may hold characters msg-ids may not


def test_message_id_differs_per_outbound_and_follows_the_sender_domain(make_outbound, make_channel):
    channel = make_channel()
    a = compose(make_outbound(outbound_id="a"), channel).message_id
    b = compose(make_outbound(outbound_id="b"), channel).message_id
    other_domain = compose(
        make_outbound(outbound_id="a", **{"from": {"address": "news@Brand.Example"}}), channel
    ).message_id

    assert a != b
    assert other_domain == make_message_id("a", "brand.example")
    assert other_domain.split("@")[0] == a.split("@")[0]


def test_reply_threads_with_in_reply_to_and_references(make_outbound, make_channel):
    """References keep the thread and end with the parent; ids get their angle brackets."""
    outbound = make_outbound(
        in_reply_to="parent@customer.example",
        references=["<root@customer.example>", "<parent@customer.example>"],
    )
    message = parsed(compose(outbound, make_channel()))

    assert message["In-Reply-To"] == "<parent@customer.example>"
    assert message["References"].split() == [
        "<root@customer.example>",
        "<parent@customer.example>",
    ]


def test_references_get_the_parent_appended():
    assert thread_references(["<a@x>"], "b@x") == ["<a@x>", "<b@x>"]
    assert thread_references([], None) == []


def test_malformed_parent_id_is_rejected(make_outbound, make_channel):
    with pytest.raises(MessageRejected, match="in_reply_to"):
        compose(make_outbound(in_reply_to="no at sign"), make_channel())


def test_from_defaults_to_the_channel_address_and_can_be_overridden(make_outbound, make_channel):
    channel = make_channel()
    default = parsed(compose(make_outbound(), channel))
    custom = compose(
        make_outbound(**{"from": {"name": "Shop Team", "address": "team@shop.example"}}), channel
    )

    assert default["From"] == "support@shop.example"
    assert parsed(custom)["From"] == "Shop Team <team@shop.example>"
    # Bounces come back to the channel's mailbox, whatever the From says.
    assert custom.envelope.mail_from == "support@shop.example"


def test_without_any_sender_address_the_message_is_rejected(make_outbound, make_channel):
    with pytest.raises(MessageRejected, match="no sender"):
        compose(make_outbound(), make_channel(email_address=None))


def test_unsendable_recipient_is_rejected_naming_the_field(make_outbound, make_channel):
    outbound = make_outbound(to=[{"address": "ada@customer.example"}, {"address": "not mail"}])
    with pytest.raises(MessageRejected, match=r"to\[1\]"):
        compose(outbound, make_channel())


def test_date_and_subject(make_outbound, make_channel):
    created = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
    message = parsed(compose(make_outbound(created_at=created, subject="Grüße"), make_channel()))

    assert message["Date"].datetime == created
    assert message["Subject"] == "Grüße"


def test_text_and_html_become_alternatives(make_outbound, make_channel):
    message = parsed(compose(make_outbound(html_body="<p>Hi</p>"), make_channel()))

    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content() == "Your parcel is on its way.\n"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hi</p>"


def test_html_only(make_outbound, make_channel):
    message = parsed(compose(make_outbound(text_body=None, html_body="<b>x</b>"), make_channel()))
    assert message.get_content_type() == "text/html"


def test_attachments_and_inline_images(make_outbound, make_channel):
    """Inline parts with a Content-ID sit next to the html; others are plain attachments."""
    outbound = make_outbound(
        html_body='<p><img src="cid:logo@shop"></p>',
        attachments=[
            {"filename": "invoice.pdf", "content_type": "application/pdf", "content": "JVBERg=="},
            {
                "filename": "logo.png",
                "content_type": "image/png",
                "content": "iVBORw==",
                "inline": True,
                "content_id": "logo@shop",
            },
        ],
    )
    contents = [a.content for a in outbound.attachments]
    message = parsed(compose(outbound, make_channel(), contents))

    assert message.get_content_type() == "multipart/mixed"
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert parts["invoice.pdf"].get_content() == b"%PDF"
    assert parts["invoice.pdf"].get_content_disposition() == "attachment"
    assert parts["logo.png"]["Content-ID"] == "<logo@shop>"
    assert parts["logo.png"].get_content_disposition() == "inline"
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]


def test_attachment_count_must_match_loaded_contents(make_outbound, make_channel):
    outbound = make_outbound(
        attachments=[{"filename": "a.txt", "content_type": "text/plain", "content": "YQ=="}]
    )
    with pytest.raises(ValueError, match="1 attachments declared, 0 loaded"):
        compose(outbound, make_channel(), [])


@pytest.mark.parametrize("field", ["subject", "in_reply_to"])
@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r"])
def test_header_injection_is_refused_before_compose(make_outbound, field, line_break):
    """CR/LF in a header field never gets as far as a message: the model refuses it."""
    with pytest.raises(ValidationError, match="CR or LF"):
        make_outbound(**{field: f"Hello{line_break}Bcc: victim@example.com"})
