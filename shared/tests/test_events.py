"""Event models: JSON round-trips, tolerant readers, header-injection refusal."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from email_channels.blobstore import BlobRef
from email_channels.codec import decode, encode, event_headers, header
from email_channels.errors import PoisonRecord
from email_channels.events import (
    Address,
    ChannelConfig,
    DeadLetter,
    DeliveryEvent,
    DeliveryStatus,
    ImapInbound,
    OutboundEmail,
    RawEmail,
    SourceIdentity,
)
from email_channels.secretbox import SecretBox

BOX = SecretBox.from_env(f"k1:{SecretBox.generate_key()}")
ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,40}", fullmatch=True)
header_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)))
addresses = st.builds(
    Address,
    name=st.none() | header_text,
    address=st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.test", fullmatch=True),
)


@given(
    email_id=ids,
    channel_id=ids,
    uid=st.integers(min_value=1, max_value=2**32 - 1),
    uidvalidity=st.integers(min_value=1, max_value=2**32 - 1),
    mime=st.binary(max_size=2000),
)
def test_raw_email_round_trips_bytes_exactly(
    email_id: str, channel_id: str, uid: int, uidvalidity: int, mime: bytes
) -> None:
    """Raw MIME survives JSON (as base64) byte for byte."""
    event = RawEmail(
        email_id=email_id,
        channel_id=channel_id,
        source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=uidvalidity, uid=uid),
        size=len(mime),
        sha256=BlobRef.of(mime).sha256,
        raw_mime=mime,
    )
    again = decode(RawEmail, encode(event))
    assert again == event
    assert again.raw_mime == mime
    assert json.loads(encode(event)) == json.loads(event.model_dump_json(by_alias=True))


@given(key=st.none() | st.binary(max_size=50), value=st.none() | st.binary(max_size=200))
def test_encoded_bytes_fields_are_the_json_pydantic_writes(
    key: bytes | None, value: bytes | None
) -> None:
    """The codec's direct base64 of bytes fields gives pydantic's JSON document, nulls included."""
    letter = DeadLetter(
        stage="fetch",
        source_topic="email.raw",
        partition=-1,
        offset=-1,
        error_kind="oversize",
        error_message="big",
        retriable=False,
        original_key=key,
        original_value=value,
    )
    assert json.loads(encode(letter)) == json.loads(letter.model_dump_json(by_alias=True))


@given(
    outbound_id=ids,
    to=st.lists(addresses, min_size=1, max_size=3),
    subject=header_text,
    body=st.text(),
)
def test_outbound_round_trips(outbound_id: str, to: list[Address], subject: str, body: str) -> None:
    """What a campaign service writes is what the sender reads."""
    event = OutboundEmail(
        outbound_id=outbound_id, channel_id="c1", to=to, subject=subject, text_body=body
    )
    assert decode(OutboundEmail, encode(event)) == event


@given(password=st.text(min_size=1, max_size=50))
def test_channel_config_round_trips_with_encrypted_password(password: str) -> None:
    """Channel configs carry only ciphertext; the plaintext never appears in the JSON."""
    channel = ChannelConfig(
        id="ch1",
        name="Support",
        email_address="support@example.test",
        inbound=ImapInbound(
            host="imap.example.test", port=993, username="support", password=BOX.encrypt(password)
        ),
    )
    data = encode(channel)
    again = decode(ChannelConfig, data)
    assert again == channel
    assert isinstance(again.inbound, ImapInbound)
    assert BOX.decrypt(again.inbound.password) == password
    assert b'"password":{"ciphertext":"v1:' in data


def test_readers_ignore_fields_added_by_newer_writers() -> None:
    """An added optional field keeps the version: old readers must not choke on it."""
    event = DeliveryEvent(
        outbound_id="o1", channel_id="c1", status=DeliveryStatus.SENT, transport="smtp"
    )
    document = json.loads(encode(event))
    document["something_new"] = {"nested": True}
    assert decode(DeliveryEvent, json.dumps(document).encode()) == event


@pytest.mark.parametrize("field", ["subject", "in_reply_to"])
def test_header_injection_in_outbound_is_refused(field: str) -> None:
    """CR/LF in any header-bound field is a validation error naming the field."""
    values = {"outbound_id": "o1", "channel_id": "c1", "to": [{"address": "a@b.test"}]}
    values[field] = "hello\r\nBcc: victim@example.test"
    with pytest.raises(ValidationError) as info:
        OutboundEmail.model_validate(values)
    assert field in str(info.value)


def test_header_injection_in_addresses_is_refused() -> None:
    with pytest.raises(ValidationError):
        Address(address="a@b.test\r\nBcc: x@y.test")


def test_decode_names_the_failing_field() -> None:
    """A poison record's reason says which field is wrong, for the dead-letter record."""
    with pytest.raises(PoisonRecord, match="outbound_id"):
        decode(OutboundEmail, b'{"channel_id": "c1", "to": [{"address": "a@b.test"}]}')
    with pytest.raises(PoisonRecord, match="not a valid OutboundEmail"):
        decode(OutboundEmail, b"\xff not json")
    with pytest.raises(PoisonRecord, match="empty value"):
        decode(OutboundEmail, None)


def test_dead_letter_keeps_the_original_bytes() -> None:
    letter = DeadLetter(
        stage="router",
        source_topic="email.raw",
        partition=0,
        offset=7,
        error_kind="PoisonRecord",
        error_message="bad",
        retriable=False,
        original_key=b"k",
        original_value=b"\x00\xff",
    )
    assert decode(DeadLetter, encode(letter)).original_value == b"\x00\xff"


def test_standard_headers_name_the_schema() -> None:
    event = DeliveryEvent(
        outbound_id="o1", channel_id="c1", status=DeliveryStatus.SENT, transport="smtp"
    )
    headers = event_headers(event, **{"campaign-id": "camp"})
    assert header(headers, "schema") == "DeliveryEvent/v1"
    assert header(headers, "campaign-id") == "camp"


def test_source_identity_keys_are_stable() -> None:
    imap = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=5, uid=9)
    assert imap.key == "imap:INBOX:5:9"
    assert SourceIdentity(protocol="pop3", uidl="abc").key == "pop3:abc"
