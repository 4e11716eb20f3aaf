"""The IMAP adapter's pure parts: response parsing, cursor planning, names, error mapping."""

from __future__ import annotations

import ssl

import pytest
from aioimaplib import Abort, CommandTimeout
from hypothesis import given
from hypothesis import strategies as st

from email_channels.errors import ChannelMisconfigured, PipelineError
from email_channels.events import FetchCursor, FolderCursor, SourceIdentity
from fetcher.sources import SourceUnavailable
from fetcher.sources.imap import (
    FolderState,
    ImapRefused,
    advance_cursor,
    encode_mailbox,
    map_imap_error,
    parse_fetched_body,
    parse_search,
    parse_select,
    plan_folder,
)

# Shapes as aioimaplib hands them over from Dovecot ("* " and "SEARCH" already stripped).
SELECT = [
    b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
    b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
    b"3 EXISTS",
    b"0 RECENT",
    b"OK [UIDVALIDITY 1795934589] UIDs valid",
    b"OK [UIDNEXT 4] Predicted next UID",
    b"[READ-WRITE] Select completed (0.001 + 0.000 secs).",
]


def test_select_gives_uidvalidity_uidnext_and_exists():
    assert parse_select(SELECT) == FolderState(uidvalidity=1795934589, uidnext=4, exists=3)


def test_select_without_uidnext():
    assert parse_select([b"OK [UIDVALIDITY 9] x", b"done"]) == FolderState(9, None, None)


def test_search_numbers_ignore_the_completion_line():
    assert parse_search([b"3 5 4", b"Search completed (0.001 + 0.000 secs)."]) == [3, 4, 5]
    assert parse_search([b"Search completed."]) == []
    assert parse_search([b"", b"Search completed."]) == []


def test_fetched_body_uid_first():
    body = b"Subject: m1\r\n\r\nhello (with a parenthesis\r\n"
    lines = [
        b"2 FETCH (UID 2 BODY[] {%d}" % len(body),
        bytearray(body),
        b")",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    assert parse_fetched_body(lines, 2) == body


def test_fetched_body_uid_after_the_literal_and_unsolicited_fetch_mixed_in():
    body = b"Subject: x\r\n\r\nbody\r\n"
    lines = [
        b"1 FETCH (FLAGS (\\Seen))",  # another session changed flags of message 1
        b"4 FETCH (BODY[] {%d}" % len(body),
        bytearray(body),
        b" UID 9)",
        b"Fetch completed.",
    ]
    assert parse_fetched_body(lines, 9) == body
    assert parse_fetched_body(lines, 8) is None


def test_fetch_of_an_expunged_uid_is_empty():
    assert parse_fetched_body([b"Fetch completed (0.001 + 0.000 secs)."], 99) is None


def test_fetched_body_without_uid_item_is_taken_when_it_is_the_only_one():
    lines = [b"1 FETCH (BODY[] {2}", bytearray(b"hi"), b")", b"done"]
    assert parse_fetched_body(lines, 1) == b"hi"


def test_first_sync_of_a_folder_takes_everything():
    plan = plan_folder(None, uidvalidity=5, uidnext=100)
    assert plan.cursor == FolderCursor(uidvalidity=5, last_uid=0)
    assert not plan.reset


def test_same_uidvalidity_continues_after_the_last_uid():
    current = FolderCursor(uidvalidity=5, last_uid=42)
    assert plan_folder(current, uidvalidity=5, uidnext=100).cursor is current


def test_changed_uidvalidity_skips_the_renumbered_mail():
    plan = plan_folder(FolderCursor(uidvalidity=5, last_uid=42), uidvalidity=6, uidnext=10)
    assert plan.reset
    assert plan.previous_uidvalidity == 5
    assert plan.cursor == FolderCursor(uidvalidity=6, last_uid=9)


def test_advance_never_moves_backwards_and_keeps_other_folders():
    cursor = FetchCursor(
        channel_id="c",
        folders={
            "INBOX": FolderCursor(uidvalidity=1, last_uid=10),
            "Junk": FolderCursor(uidvalidity=2, last_uid=3),
        },
    )
    older = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=7)
    newer = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=11)
    assert advance_cursor(cursor, older).folders["INBOX"].last_uid == 10
    advanced = advance_cursor(cursor, newer)
    assert advanced.folders["INBOX"].last_uid == 11
    assert advanced.folders["Junk"] == cursor.folders["Junk"]


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Archive/2024", '"Archive/2024"'),
        ("Tom & Jerry", '"Tom &- Jerry"'),
        ("Entwürfe", '"Entw&APw-rfe"'),
        ("~peter/mail/台北/日本語", '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'),  # RFC 3501 example
        ('say "hi"', '"say \\"hi\\""'),
    ],
)
def test_mailbox_names_are_modified_utf7_and_quoted(name, wire):
    assert encode_mailbox(name) == wire


def _decode_mutf7(wire: str) -> str:
    import base64  # noqa: PLC0415
    import re  # noqa: PLC0415

    text = wire[1:-1].replace('\\"', '"').replace("\\\\", "\\")

    def one(match: re.Match[str]) -> str:
        if match.group(1) == "":
            return "&"
        data = match.group(1).replace(",", "/")
        return base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", one, text)


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_mailbox_encoding_round_trips(name):
    wire = encode_mailbox(name)
    assert wire.isascii()
    assert _decode_mutf7(wire) == name


# --- error mapping ---


@pytest.mark.parametrize(
    ("refusal", "step", "expected", "expected_step"),
    [
        (
            ImapRefused("LOGIN", "NO", "[AUTHENTICATIONFAILED] Authentication failed."),
            "auth",
            ChannelMisconfigured,
            "auth",
        ),
        (ImapRefused("LOGIN", "NO", "Login failed."), "auth", ChannelMisconfigured, "auth"),
        (ImapRefused("LOGIN", "NO", "[UNAVAILABLE] Try later"), "auth", SourceUnavailable, "auth"),
        (
            ImapRefused("LOGIN", "NO", "[PRIVACYREQUIRED] Plaintext auth disallowed"),
            "auth",
            ChannelMisconfigured,
            "tls",
        ),
        (
            ImapRefused("SELECT", "NO", "Mailbox doesn't exist: Nope"),
            "folder",
            ChannelMisconfigured,
            "folder",
        ),
        (
            ImapRefused("UID MOVE", "NO", "[TRYCREATE] Mailbox doesn't exist: Archive"),
            "settle",
            ChannelMisconfigured,
            "folder",
        ),
        (
            ImapRefused("UID FETCH", "NO", "Some messages were expunged"),
            "fetch",
            SourceUnavailable,
            "fetch",
        ),
        (
            ImapRefused("STORE", "BAD", "Error in IMAP command"),
            "settle",
            SourceUnavailable,
            "settle",
        ),
    ],
)
def test_refusals_map_by_response_code_then_by_step(refusal, step, expected, expected_step):
    error = map_imap_error(refusal, step=step)
    assert type(error) is expected
    assert error.step == expected_step  # type: ignore[union-attr]


def test_untrusted_certificate_is_a_tls_misconfiguration():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    error = map_imap_error(exc, step="tcp")
    assert isinstance(error, ChannelMisconfigured)
    assert error.step == "tls"
    assert "self-signed certificate" in str(error)


@pytest.mark.parametrize(
    ("exc", "step"),
    [
        (TimeoutError(), "fetch"),
        (ConnectionResetError(104, "Connection reset by peer"), "fetch"),
        (ConnectionRefusedError(111, "Connection refused"), "tcp"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "tls"),
        (Abort("command UID illegal in state AUTH"), "fetch"),
    ],
)
def test_timeouts_and_resets_are_transient(exc, step):
    error = map_imap_error(exc, step="fetch")
    assert isinstance(error, SourceUnavailable)
    assert error.retriable
    assert error.step == step


def test_command_timeout_is_transient():
    error = map_imap_error(CommandTimeout.__new__(CommandTimeout), step="fetch")
    assert isinstance(error, SourceUnavailable)


def test_pipeline_errors_pass_through_and_bugs_are_not_mapped():
    own = ChannelMisconfigured("x", step="auth")
    assert map_imap_error(own, step="fetch") is own
    assert map_imap_error(KeyError("bug"), step="fetch") is None
    assert not isinstance(map_imap_error(ValueError("bug"), step="fetch"), PipelineError)
