"""Raw 8-bit header bytes (no RFC 2047) are decoded, and what was guessed is recorded."""

from __future__ import annotations

import hashlib

import pytest

from router.header_text import decode_8bit
from router.parsing import parse_email

SUBJECTS = {
    "gbk": "关于订单的问题",
    "gb2312": "您好请问发货时间",
    "shift_jis": "注文についての問い合わせ",
    "euc-kr": "주문 문의드립니다",
    "koi8-r": "Вопрос по заказу",
}


def message(charset: str, subject: bytes, name: bytes = b"Support") -> bytes:
    return (
        b"From: " + name + b" <customer@example.cn>\r\n"
        b"To: support@shop.example\r\n"
        b"Subject: " + subject + b"\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "正文".encode(charset, "replace") + b"\r\n"
    )


@pytest.mark.parametrize(("charset", "text"), SUBJECTS.items())
def test_a_raw_subject_is_read_in_the_charset_of_the_first_text_part(
    charset: str, text: str
) -> None:
    """GBK / GB2312 / Shift_JIS / EUC-KR / KOI8-R subject bytes come out as the right text."""
    raw_subject = text.encode(charset)
    parsed = parse_email(message(charset, raw_subject))
    assert parsed.subject == text
    (record,) = parsed.undecoded_headers
    assert record.name == "subject"
    assert record.sha256 == hashlib.sha256(raw_subject).hexdigest()


def test_a_raw_display_name_is_decoded_and_recorded() -> None:
    """A display name in raw GBK bytes is read with the body's charset; its hash is kept."""
    name = "张伟".encode("gbk")
    parsed = parse_email(message("gbk", b"hello", name=name))
    assert parsed.from_ is not None
    assert (parsed.from_.name, parsed.from_.address) == ("张伟", "customer@example.cn")
    assert [(r.name, r.charset) for r in parsed.undecoded_headers] == [("from", "gbk")]


def test_raw_utf8_wins_over_a_declared_single_byte_charset() -> None:
    """A UTF-8 subject in a Latin-1 message is read as UTF-8, not as Latin-1 mojibake."""
    parsed = parse_email(message("iso-8859-1", "Grüße aus Köln".encode()))
    assert parsed.subject == "Grüße aus Köln"
    assert parsed.undecoded_headers[0].charset == "utf-8"


def test_without_a_declared_charset_the_detector_then_latin1_decide() -> None:
    """No charset anywhere: a multi-byte guess by charset-normalizer, else Latin-1."""
    long_gbk = ("我们收到了您的订单将在三个工作日内发货请耐心等待。" * 2).encode("gbk")
    assert decode_8bit(long_gbk, None)[0].startswith("我们收到了您的订单")
    assert decode_8bit(b"Fr\xf6sche", None) == ("Frösche", "latin-1")


def test_raw_bytes_inside_an_encoded_word_take_the_words_charset() -> None:
    """Outlook's ``=?iso-8859-1?Q?Fr<raw f6>sche?=`` reads as Frösche."""
    raw = b"From: a@b.example\r\nSubject: =?iso-8859-1?Q?Die_Fr\xf6sche?=\r\n\r\nx\r\n"
    parsed = parse_email(raw)
    assert parsed.subject == "Die Frösche"
    assert parsed.undecoded_headers[0].charset == "iso-8859-1"


def test_an_ascii_message_records_nothing_undecoded() -> None:
    """Clean headers leave no undecoded record."""
    parsed = parse_email(b"From: a@b.example\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nx\r\n")
    assert parsed.subject == "café"
    assert parsed.undecoded_headers == ()
