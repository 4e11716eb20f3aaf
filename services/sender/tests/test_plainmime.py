"""plainmime: messages written without the stdlib generator read back exactly as composed."""

from __future__ import annotations

import email
from email import policy
from typing import Any

import pytest

from email_channels.headers import LOOP_HEADER
from sender.compose import compose
from sender.errors import MessageRejected
from sender.plainmime import MAX_LINE, check_header_block, encoded_words, fold

LONG_SUBJECT = "Re: " + " ".join(f"word{i}" for i in range(60))
CASES: dict[str, dict[str, Any]] = {
    "ascii": {},
    "umlaut subject": {"subject": "Grüße aus Köln \u2013 Ihre Bestellung 🚚"},
    "long subject": {"subject": LONG_SUBJECT},
    "long non-ascii subject": {"subject": "Ünïcödé " * 40},
    "quoted name": {
        "to": [{"name": 'Ada "the" Customer, Ltd.', "address": "ada@customer.example"}]
    },
    "non-ascii name": {"to": [{"name": "Zoë Ångström", "address": "zoe@customer.example"}]},
    "cc and references": {
        "cc": [{"address": "boss@customer.example"}, {"name": "Bob", "address": "b@x.example"}],
        "in_reply_to": "<parent@customer.example>",
        "references": [f"<ref{i}@customer.example>" for i in range(20)],
    },
    "non-ascii body": {"text_body": "Grüße\nzweite Zeile\n"},
    "long body line": {"text_body": "x" * 2000 + "\nshort\n"},
    "control chars and trailing space": {"text_body": "a\x01b \nend\t\n"},
    "html only": {"text_body": None, "html_body": "<p>Hallo <b>Zoë</b></p>"},
    "text and html": {"text_body": "plain ü\n", "html_body": "<p>rich</p>\n"},
    "boundary-like body": {"text_body": "--=_ec_\n.\n", "html_body": "<p>--</p>"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_message_reads_back_as_composed(make_outbound, make_channel, case):
    """Headers and bodies written directly decode to exactly the outbound's values."""
    outbound = make_outbound(**CASES[case])
    composed = compose(outbound, make_channel(id="ch-direct"))
    assert composed.built is None, "this shape is written directly"
    assert all(len(line) <= MAX_LINE for line in composed.data.split(b"\r\n"))
    assert b"\n" not in composed.data.replace(b"\r\n", b"")
    # as a receiving server stores it: local line ends
    message = email.message_from_bytes(composed.data.replace(b"\r\n", b"\n"), policy=policy.default)
    assert not message.defects
    assert message["Subject"] == outbound.subject
    assert message["Message-ID"] == composed.message_id
    assert message[LOOP_HEADER] == "ch-direct"
    to = message["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [
        (a.name or "", a.address) for a in outbound.to
    ]
    if outbound.cc:
        assert [a.addr_spec for a in message["Cc"].addresses] == [a.address for a in outbound.cc]
    if outbound.references:
        assert message["References"].split() == [*outbound.references, outbound.in_reply_to]
    if outbound.text_body is not None:
        assert message.get_body(("plain",)).get_content() == outbound.text_body
    if outbound.html_body is not None:
        assert message.get_body(("html",)).get_content().rstrip("\n") == outbound.html_body.rstrip(
            "\n"
        )


def test_attachments_still_go_through_the_stdlib(make_outbound, make_channel):
    """A message with attachments is built (and parsed back) by the stdlib path."""
    outbound = make_outbound(
        attachments=[{"filename": "a.txt", "content_type": "text/plain", "content": ""}]
    )
    assert compose(outbound, make_channel(), [b"hello"]).built is not None


def test_an_unexpected_header_line_is_refused():
    """The header-block scan refuses a line we did not set, a missing one, a bare LF."""
    good = b"From: a@x.example\r\nSubject: hi\r\n there"
    check_header_block(good, ["From", "Subject"])
    with pytest.raises(MessageRejected, match="bcc"):
        check_header_block(good + b"\r\nBcc: evil@x.example", ["From", "Subject"])
    with pytest.raises(MessageRejected, match="lost: subject"):
        check_header_block(b"From: a@x.example", ["From", "Subject"])
    with pytest.raises(MessageRejected, match="bare CR or LF"):
        check_header_block(b"Subject: hi\nBcc: evil@x.example", ["Subject"])
    with pytest.raises(MessageRejected, match="not a header"):
        check_header_block(b"Subject: hi\r\nno colon here", ["Subject"])


def test_encoded_words_hold_whole_characters_within_75():
    """Each encoded word is at most 75 characters and decodes on its own."""
    words = encoded_words("€" * 100)
    assert all(len(word) <= 75 for word in words)
    decoded = "".join(str(email.header.make_header(email.header.decode_header(w))) for w in words)
    assert decoded == "€" * 100


def test_folding_keeps_every_space_and_never_leaves_a_blank_line():
    """Unfolding gives the value back; no continuation line is whitespace only."""
    value = "a  b " + "word " * 40 + "  end"
    folded = fold("Subject", value)
    assert folded is not None
    assert folded.replace("\r\n", "") == f"Subject: {value}"
    assert all(line.strip() for line in folded.split("\r\n"))
    assert fold("Subject", "x" * 1200) is None
