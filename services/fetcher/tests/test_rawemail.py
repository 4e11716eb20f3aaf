"""RawEmail construction: a stable id, the Message-ID, inline MIME or a claim check."""

from __future__ import annotations

from email_channels.blobstore import BlobRef, MemoryBlobStore
from email_channels.events import RawEmail, SourceIdentity
from fetcher.rawemail import build_raw_email, email_id_for, message_id_of

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
