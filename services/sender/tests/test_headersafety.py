"""Header injection: every header the sender writes, every way of smuggling CR/LF into it."""

from __future__ import annotations

import base64
import email
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from email_channels.headers import LOOP_HEADER
from sender.compose import compose
from sender.errors import MessageRejected
from sender.headersafety import flatten_checked, safe_header_text

CRLF_HEADER = b"hi\r\nBcc: injected@evil.example"


def q_word(raw: bytes, *, lower: bool = False) -> str:
    encoded = "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else ("_" if b == 0x20 else f"={b:02X}")
        for b in raw
    )
    return f"=?UTF-8?{'q' if lower else 'Q'}?{encoded}?="


def b_word(raw: bytes) -> str:
    return f"=?UTF-8?B?{base64.b64encode(raw).decode()}?="


PAYLOADS = {
    "q": q_word(CRLF_HEADER),
    "q-lower": q_word(CRLF_HEADER, lower=True),
    "b": b_word(CRLF_HEADER),
    "q-lf-only": q_word(b"hi\nX-Injected: 1"),
    "b-cr-only": b_word(b"hi\rX-Injected: 1"),
    "q-in-text": "Re: " + q_word(CRLF_HEADER) + " thanks",
}


def _place(field: str, payload: str) -> dict[str, Any]:  # noqa: PLR0911 - a table
    """Outbound fields putting ``payload`` into the header ``field``."""
    match field:
        case "subject":
            return {"subject": payload}
        case "to-name":
            return {"to": [{"name": payload, "address": "ada@customer.example"}]}
        case "cc-name":
            return {"cc": [{"name": payload, "address": "bob@customer.example"}]}
        case "from-name":
            return {"from": {"name": payload, "address": "support@shop.example"}}
        case "filename":
            return {
                "attachments": [{"filename": payload, "content_type": "text/plain", "content": ""}]
            }
        case "content-id":
            return {
                "attachments": [
                    {
                        "filename": "a.txt",
                        "content_type": "text/plain",
                        "content": "",
                        "content_id": payload,
                    }
                ]
            }
        case "content-type":
            return {"attachments": [{"filename": "a.txt", "content_type": payload, "content": ""}]}
        case "references":
            return {"references": [f"<{payload}@x.example>"]}
        case "in-reply-to":
            return {"in_reply_to": f"<{payload}@x.example>"}
    raise AssertionError(field)


FIELDS = [
    "subject",
    "to-name",
    "cc-name",
    "from-name",
    "filename",
    "content-id",
    "content-type",
    "references",
    "in-reply-to",
]


@pytest.mark.parametrize("encoding", sorted(PAYLOADS))
@pytest.mark.parametrize("field", FIELDS)
def test_encoded_word_line_breaks_are_refused_in_every_header(
    make_outbound, make_channel, field, encoding
):
    """An encoded word decoding to CR/LF, in any header we write, refuses the message."""
    outbound = make_outbound(**_place(field, PAYLOADS[encoding]))
    with pytest.raises(MessageRejected):
        compose(outbound, make_channel(), [b""] * len(outbound.attachments))


def test_plain_encoded_words_are_still_allowed(make_outbound, make_channel):
    """A harmless encoded word (a campaign service pre-encoding an umlaut) is sent as given."""
    outbound = make_outbound(subject=q_word("Grüße".encode()))
    message = email.message_from_bytes(
        compose(outbound, make_channel()).data, policy=policy.default
    )
    assert message["Subject"] == "Grüße"


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x0bb", "a\x85b", "a\u2028b", "a\x00b"])
def test_raw_line_breaks_are_refused(value):
    """Every character str.splitlines breaks on (and NUL) is refused, naming the field."""
    with pytest.raises(MessageRejected, match="subject"):
        safe_header_text(value, "subject")


def _stdlib_injects() -> bool:
    message = EmailMessage()
    message["Subject"] = PAYLOADS["q"]
    return b"\nBcc:" in message.as_bytes(policy=policy.SMTP)


def test_parse_back_refuses_a_message_the_generator_broke():
    """The second layer alone: a message whose flattening grows a header is never returned."""
    if not _stdlib_injects():
        pytest.skip("this Python writes encoded-word CR/LF safely; nothing to catch")
    message = EmailMessage()
    message["Subject"] = PAYLOADS["q"]  # set directly, bypassing safe_header_text
    message.set_content("x")
    with pytest.raises(MessageRejected, match="bcc"):
        flatten_checked(message)


def test_composed_bytes_carry_the_loop_header_and_crlf(make_outbound, make_channel):
    """What goes on the wire has the loop header (value: channel id) and CRLF line ends."""
    composed = compose(make_outbound(), make_channel(id="ch-loop"))
    message = email.message_from_bytes(composed.data, policy=policy.default)
    assert message[LOOP_HEADER] == "ch-loop"
    assert b"\r\n" in composed.data
    assert b"\n" not in composed.data.replace(b"\r\n", b"")
