"""Hostile messages for the parse-bound tests (built in memory; nothing is committed large)."""

from __future__ import annotations

import base64

NORMAL = (
    b"From: Alice <alice@example.com>\r\nTo: support@shop.example\r\n"
    b"Subject: where is my order\r\nMessage-ID: <n1@example.com>\r\n\r\nHello, order 42?\r\n"
)


def many_parts(count: int = 100_000) -> bytes:
    parts = [
        (
            b"From: a@b.example\r\nSubject: many parts\r\n"
            b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain\r\n\r\nfirst part text\r\n"
        )
    ]
    parts.extend(b"--XX\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(count))
    parts.append(b"--XX--\r\n")
    return b"".join(parts)


def deep_nesting(depth: int = 1_000) -> bytes:
    parts = [
        b"From: a@b.example\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary=B0\r\n\r\n"
    ]
    parts.extend(
        b"--B%d\r\nContent-Type: multipart/mixed; boundary=B%d\r\n\r\n" % (i - 1, i)
        for i in range(1, depth)
    )
    parts.append(b"--B%d\r\nContent-Type: text/plain\r\n\r\nleaf\r\n" % (depth - 1))
    parts.extend(b"--B%d--\r\n" % i for i in reversed(range(depth)))
    return b"".join(parts)


def huge_header(size: int = 30_000_000) -> bytes:
    return (
        b"From: a@b.example\r\nSubject: "
        + b"x" * size
        + b"\r\nTo: support@shop.example\r\n\r\nbody after a huge header\r\n"
    )


def base64_bomb(decoded_size: int = 40_000_000) -> bytes:
    """A short text and an attachment whose base64 decodes to more than the decoded bound."""
    line = base64.b64encode(b"\0" * 57) + b"\r\n"
    return (
        b"From: a@b.example\r\nSubject: bomb\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=zeros.bin\r\n\r\n"
        + line * (decoded_size // 57)
        + b"--XX--\r\n"
    )


def not_mime(size: int = 20_000_000) -> bytes:
    """Bytes that are not mail at all (a binary blob with no header line)."""
    return bytes(range(256)) * (size // 256)
