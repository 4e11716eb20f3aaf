"""Recipient-only decisions from a header block (pure)."""

from __future__ import annotations

import pytest

from fetcher.recipients import addressed_to, recipients_of


@pytest.mark.parametrize(
    "header",
    [
        b"To: Support <support@example.test>\r\n",
        b"Cc: a@x.test, SUPPORT@example.TEST\r\n",
        b"Delivered-To: support@example.test\r\n",  # a Bcc copy: no Bcc header survives
        b"X-Original-To: support@example.test\r\n",
        b"Envelope-To: support@example.test\r\n",
        b"To: a@x.test,\r\n\tsupport@example.test\r\n",  # folded
    ],
)
def test_the_channel_address_is_found_in_any_recipient_header(header):
    """To, Cc, delivery headers, any case, folded lines."""
    assert addressed_to(b"From: c@example.com\r\n" + header + b"\r\n", " Support@Example.test ")


def test_other_mail_and_lookalikes_are_not_for_the_channel():
    """A From or Reply-To with the address, or a longer address, is not a recipient."""
    head = (
        b"From: support@example.test\r\nReply-To: support@example.test\r\n"
        b"To: support@example.test.evil, xsupport@example.test\r\n\r\n"
    )
    assert not addressed_to(head, "support@example.test")


def test_garbage_headers_name_nobody():
    """Unparseable bytes give no recipients instead of an error."""
    assert recipients_of(b"\xff\xfe\x00garbage") == set()
