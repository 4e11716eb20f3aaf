"""RawEmail construction: a stable id, the Message-ID, inline MIME or a claim check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from email_channels.blobstore import BlobRef, MemoryBlobStore
from email_channels.events import RawEmail, SourceIdentity
from fetcher.rawemail import build_raw_email, email_id_for, message_id_of, parsed_message_id

SOURCE = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=3, uid=7)


def test_email_id_is_stable_and_differs_per_channel_and_message():
    assert email_id_for("a", SOURCE) == email_id_for("a", SOURCE)
    assert email_id_for("a", SOURCE) != email_id_for("b", SOURCE)
    other = SOURCE.model_copy(update={"uid": 8})
    assert email_id_for("a", SOURCE) != email_id_for("a", other)
    assert len(email_id_for("a", SOURCE)) == 32


def test_message_id_is_read_from_the_header_block_only_and_unfolded():
    raw = b"Subject: x\r\nMessage-ID:\r\n <abc@example.test>\r\n\r\nMessage-ID: <body@x>\r\n"
    assert message_id_of(raw) == "<abc@example.test>"


def test_missing_or_garbage_message_id_is_none_and_never_raises():
    assert message_id_of(b"Subject: no id\r\n\r\nbody") is None
    assert message_id_of(b"") is None
    assert message_id_of(b"\xff\xfe\x00garbage") is None
    assert message_id_of(b"Message-ID: <\xe9t\xe9@x>\n\nbody") == "<\ufffdt\ufffd@x>"


async def test_small_mime_is_inline_large_mime_is_claim_checked():
    blobs = MemoryBlobStore()
    small = await build_raw_email("c", SOURCE, b"tiny", blobs=blobs, inline_max_bytes=10)
    assert small.raw_mime == b"tiny"
    assert small.raw_ref is None
    assert blobs.blobs == {}

    large = await build_raw_email("c", SOURCE, b"x" * 11, blobs=blobs, inline_max_bytes=10)
    assert large.raw_mime is None
    assert large.raw_ref == BlobRef.of(b"x" * 11)
    assert large.sha256 == large.raw_ref.sha256
    assert await blobs.get(large.raw_ref) == b"x" * 11
    assert RawEmail.model_validate_json(large.model_dump_json()) == large


_NAMES = st.sampled_from(
    [b"Message-ID", b"message-id", b"MESSAGE-ID", b"Subject", b"To", b"X-Long", b"Message-Idx"]
)
_VALUES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_LINES = st.one_of(
    st.tuples(_NAMES, st.sampled_from([b":", b": ", b":\t"]), _VALUES).map(b"".join),
    _VALUES.map(lambda v: b" " + v),  # continuation
    _VALUES.map(lambda v: b"\t" + v),
)


@given(st.lists(_LINES, max_size=8), st.sampled_from([b"\r\n", b"\n"]))
def test_fast_path_reads_the_message_id_as_the_email_package_does(lines, eol):
    """Well-formed header blocks: the one-regex reading equals compat32's, byte for byte."""
    head = b"".join(line + eol for line in lines) + eol
    assert message_id_of(head + b"body") == parsed_message_id(head)


@pytest.mark.parametrize(
    "raw",
    [
        b"From sender Mon Nov 30\r\nMessage-ID: <a@x>\r\n\r\n",  # mbox line: parser decides
        b"Subject: x\r\nno colon here\r\nMessage-ID: <late@x>\r\n\r\n",  # body starts early
        b"Message-ID: <a@x>\rSubject: bare CR\r\n\r\n",
    ],
)
def test_malformed_blocks_are_read_by_the_email_package(raw):
    """Anything not plainly well formed takes the email package's reading."""
    end = raw.index(b"\r\n\r\n") + 4
    assert message_id_of(raw) == parsed_message_id(raw[:end])
