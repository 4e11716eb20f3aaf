"""Hostile mail is bounded: each case under 2 s of CPU and 256 MB of memory, read as far as
the bounds allow (flagged) or dead-lettered with the reason, and the next message routes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from email_channels.blobstore import MemoryBlobStore
from email_channels.events import ChannelConfig, RawEmail, SourceIdentity
from router.bodies import html_to_text
from router.handlers import EmailRouter
from router.parse_limits import ParseLimits
from router.parsing import UnparseableEmail, parse_email

HERE = Path(__file__).parent
_SPEC = importlib.util.spec_from_file_location("hostile_mail", HERE / "hostile_mail.py")
assert _SPEC is not None
assert _SPEC.loader is not None
hostile_mail = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hostile_mail)
CASES = ["many_parts", "deep_nesting", "huge_header", "base64_bomb", "not_mime"]

CHILD = textwrap.dedent(
    """
    import json, sys, time
    # The peak RSS is read from /proc (VmHWM) after resetting it here: getrusage's ru_maxrss
    # survives exec on Linux, so it would report the (large) pytest parent that forked us.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    sys.path.insert(0, sys.argv[1])
    import hostile_mail
    from router.parsing import UnparseableEmail, parse_email

    parse_email(hostile_mail.NORMAL)  # warm up imports before measuring
    results = {}
    for case in sys.argv[2:]:
        raw = getattr(hostile_mail, case)()
        start = time.process_time()
        try:
            parsed = parse_email(raw)
            outcome = {"limits": parsed.flags.parse_limits, "subject": parsed.subject,
                       "text": (parsed.text_body or "")[:40],
                       "attachments": len(parsed.attachments)}
        except UnparseableEmail as exc:
            outcome = {"dead_letter": str(exc)}
        outcome["cpu_s"] = time.process_time() - start
        del raw
        after = parse_email(hostile_mail.NORMAL)
        outcome["next_subject"] = after.subject
        results[case] = outcome
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    results["max_rss_mb"] = hwm_kb / 1024
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, object]]:
    """All hostile cases parsed in one fresh process (so its peak memory is theirs)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(HERE), *CASES],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", CASES)
def test_each_hostile_message_costs_under_2s_cpu_and_the_next_one_parses(
    measured: dict[str, dict[str, object]], case: str
) -> None:
    """100,000 parts, 1,000-deep nesting, a 30 MB header, a base64 bomb, not-MIME: < 2 s CPU."""
    outcome = measured[case]
    assert float(outcome["cpu_s"]) < 2.0, outcome  # type: ignore[arg-type]
    assert outcome["next_subject"] == "where is my order"


def test_all_hostile_messages_stay_under_256_mb(
    measured: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    """The peak memory of the process that parsed all five cases is under 256 MB."""
    with capsys.disabled():
        cpu = {case: round(float(measured[case]["cpu_s"]), 3) for case in CASES}  # type: ignore[index]
        print(f"\nhostile mail: cpu_s {cpu}, peak rss {measured['max_rss_mb']:.0f} MB")  # noqa: T201
    assert float(measured["max_rss_mb"]) < 256, measured  # type: ignore[arg-type]


def test_each_bound_is_named_and_what_could_be_read_is_kept(
    measured: dict[str, dict[str, object]],
) -> None:
    """Over a bound: the record holds what was read and names the bound; no-header -> DLQ."""
    assert "parts" in measured["many_parts"]["limits"]  # type: ignore[operator]
    assert str(measured["many_parts"]["text"]).startswith("first part text")
    assert measured["many_parts"]["subject"] == "many parts"
    assert "depth" in measured["deep_nesting"]["limits"]  # type: ignore[operator]
    assert "header_size" in measured["huge_header"]["limits"]  # type: ignore[operator]
    assert measured["huge_header"]["text"] == "body after a huge header\r\n"
    assert "decoded_size" in measured["base64_bomb"]["limits"]  # type: ignore[operator]
    assert str(measured["base64_bomb"]["text"]).strip() == "see attachment"
    assert measured["base64_bomb"]["attachments"] == 0
    assert "no header fields" in str(measured["not_mime"]["dead_letter"])


def test_a_huge_header_is_cut_not_dropped() -> None:
    """The over-long Subject is kept up to the field bound; the fields after it are read."""
    limits = ParseLimits(max_header_field_bytes=1_000)
    raw = b"From: a@b.example\r\nSubject: " + b"y" * 5_000 + b"\r\nTo: c@d.example\r\n\r\nx\r\n"
    parsed = parse_email(raw, limits=limits)
    assert parsed.subject is not None
    assert 900 < len(parsed.subject) < 1_000
    assert [a.address for a in parsed.to] == ["c@d.example"]
    assert parsed.flags.parse_limits == ["header_size"]
    assert parsed.flags.headers_repaired


def test_too_many_header_fields_are_dropped_past_the_bound() -> None:
    """Fields past ``max_header_fields`` are not read; the flag says so."""
    many = b"".join(b"X-Filler-%d: v\r\n" % i for i in range(50))
    raw = b"From: a@b.example\r\n" + many + b"Subject: late\r\n\r\nx\r\n"
    parsed = parse_email(raw, limits=ParseLimits(max_header_fields=20))
    assert parsed.subject is None
    assert parsed.from_ is not None
    assert "header_count" in parsed.flags.parse_limits


def test_the_time_budget_stops_the_part_walk() -> None:
    """With no time left, the parts after the body are not read and ``time`` is flagged."""
    parsed = parse_email(hostile_mail.many_parts(200), limits=ParseLimits(max_parse_s=0.0))
    assert "time" in parsed.flags.parse_limits
    assert parsed.text_body is not None
    assert parsed.text_body.startswith("first part text")


def test_html_to_text_reads_a_bounded_prefix() -> None:
    """HTML-to-text reads at most ``max_chars`` of a huge html body."""
    text = html_to_text("<p>start</p>" + "<b>x</b>" * 1_000_000, max_chars=1_000)
    assert text.startswith("start")
    assert len(text) < 1_000


def test_not_mime_text_is_dead_lettered_with_its_reason() -> None:
    """A plain text file with no header line is a permanent error naming the reason."""
    with pytest.raises(UnparseableEmail, match="no header fields"):
        parse_email(b"Dear team,\r\n\r\nplease find my notes below.\r\n" * 1000)


async def test_the_router_routes_the_message_after_a_hostile_one() -> None:
    """Through EmailRouter: a 100,000-part message is routed flagged, then a normal one."""
    channel = ChannelConfig(
        id="ch-1", name="S", email_address="support@shop.example", default_campaign_id="support"
    )
    router = EmailRouter(channels={"ch-1": channel}, filters={}, blobs=MemoryBlobStore())

    def raw_email(mime: bytes, email_id: str) -> RawEmail:
        return RawEmail(
            email_id=email_id,
            channel_id="ch-1",
            source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=1),
            size=len(mime),
            sha256=hashlib.sha256(mime).hexdigest(),
            raw_mime=mime,
        )

    hostile = await asyncio.wait_for(
        router.route(raw_email(hostile_mail.many_parts(), "e-1")), timeout=10
    )
    assert "parts" in hostile.flags.parse_limits
    normal = await router.route(raw_email(hostile_mail.NORMAL, "e-2"))
    assert normal.subject == "where is my order"
    assert normal.flags.parse_limits == []


def test_a_message_too_large_for_the_stdlib_parser_keeps_header_decoding_and_attachments() -> None:
    """Over ``max_stdlib_bytes`` the Rust parser reads the MIME; raw GBK headers still decode."""
    attachment = base64.b64encode(b"%PDF" + b"\0" * 3_000)
    raw = (
        "Subject: 发票".encode("gbk") + b"\r\nFrom: a@b.example\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=gbk\r\n\r\n"
        + "请查收".encode("gbk")
        + b"\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n" + attachment + b"\r\n--XX--\r\n"
    )
    parsed = parse_email(raw, limits=ParseLimits(max_stdlib_bytes=1_000))
    assert parsed.subject == "发票"
    assert [r.charset for r in parsed.undecoded_headers] == ["gbk"]
    assert parsed.text_body is not None
    assert parsed.text_body.startswith("请查收")
    assert [(a.filename, a.content[:4]) for a in parsed.attachments] == [("a.pdf", b"%PDF")]
