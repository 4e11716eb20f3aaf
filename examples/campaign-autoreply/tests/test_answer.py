"""The autoreply decision for one routed record (pure, no Kafka)."""

from __future__ import annotations

from campaign_autoreply.answer import PURPOSE, Skip, answer
from email_channels.codec import encode
from email_channels.events import Address, EmailFlags, RoutedEmail, RoutingReason, SourceIdentity
from email_channels_contracts import CAMPAIGN_HEADER, outbound_id_for


def routed_value(**changes: object) -> bytes:
    base: dict[str, object] = {
        "email_id": "e-1",
        "channel_id": "ch-1",
        "campaign_id": "support",
        "reason": RoutingReason(kind="default"),
        "conversation_id": "conv-1",
        "message_id": "<m1@customer.example>",
        "from": Address(address="alice@customer.example"),
        "subject": "Order",
        "source": SourceIdentity(protocol="pop3", uidl="u1"),
    }
    base.update(changes)
    return encode(RoutedEmail.model_validate(base))


HEADERS = [(CAMPAIGN_HEADER, b"support")]


def test_another_campaigns_record_is_skipped_without_decoding() -> None:
    """A record for another campaign is skipped even when its value is not JSON at all."""
    decision = answer("support", [(CAMPAIGN_HEADER, b"billing")], b"\xff not json", "thanks")
    assert decision == Skip("another campaign")


def test_a_customer_mail_gets_one_acknowledgement() -> None:
    """The answer goes to the sender, from the same channel, keyed by the email id."""
    decision = answer("support", HEADERS, routed_value(), "thanks")
    assert not isinstance(decision, Skip)
    assert decision.outbound_id == outbound_id_for("e-1", PURPOSE)
    assert decision.text_body == "thanks"
    assert decision.in_reply_to == "<m1@customer.example>"


def test_auto_replies_bounces_and_loops_are_not_answered() -> None:
    """Answering an auto-reply or a bounce would start a mail loop: skipped."""
    for flags in (EmailFlags(auto_reply=True), EmailFlags(bounce=True), EmailFlags(loop=True)):
        decision = answer("support", HEADERS, routed_value(flags=flags), "thanks")
        assert isinstance(decision, Skip)
        assert decision.email_id == "e-1"
