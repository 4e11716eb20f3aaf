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
    decode_mailbox,
    encode_mailbox,
    map_imap_error,
    needs_recheck,
    parse_fetch,
    parse_fetched_body,
    parse_list,
    parse_search,
    parse_select,
    plan_folder,
    uid_set,
    wanted_folders,
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


def test_changed_uidvalidity_takes_the_folder_again_and_rechecks_what_was_there():
    """Renumbered: start from UID 1, and UIDs up to UIDNEXT-1 are checked against Kafka."""
    plan = plan_folder(FolderCursor(uidvalidity=5, last_uid=42), uidvalidity=6, uidnext=10)
    assert plan.reset
    assert plan.previous_uidvalidity == 5
    assert plan.cursor == FolderCursor(uidvalidity=6, last_uid=0, recheck_through=9)


def test_recheck_ends_once_the_cursor_passes_the_renumbered_uids():
    """needs_recheck holds up to recheck_through; advancing past it clears it."""
    cursor = FetchCursor(
        channel_id="c",
        folders={"INBOX": FolderCursor(uidvalidity=6, last_uid=0, recheck_through=3)},
    )
    message = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=6, uid=3)
    assert needs_recheck(cursor, message)
    later = SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=6, uid=4)
    assert not needs_recheck(cursor, later)
    assert advance_cursor(cursor, [message]).folders["INBOX"].recheck_through is None


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
    assert advance_cursor(cursor, [older]).folders["INBOX"].last_uid == 10
    advanced = advance_cursor(cursor, [older, newer])
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


def test_a_batch_fetch_gives_each_message_its_size_and_sections():
    """Two messages, each with RFC822.SIZE, a header-fields literal and a body literal."""
    lines = [
        b"1 FETCH (UID 5 RFC822.SIZE 11 BODY[HEADER.FIELDS (TO CC)] {9}",
        bytearray(b"To: a@b\r\n"),
        b" BODY[] {2}",
        bytearray(b"hi"),
        b")",
        b"2 FETCH (FLAGS (\\Seen) UID 6)",  # unsolicited flag change, nothing asked for
        b"3 FETCH (UID 7 RFC822.SIZE 4 BODY[HEADER.FIELDS (TO CC)] {0}",
        bytearray(b""),
        b" BODY[] {2}",
        bytearray(b"yo"),
        b")",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    items = {m.uid: m for m in parse_fetch(lines)}
    assert items[5].size == 11
    assert items[5].section("BODY[HEADER.FIELDS") == b"To: a@b\r\n"
    assert items[5].sections["BODY[]"] == b"hi"
    assert items[6].sections == {}
    assert items[7].section("BODY[HEADER.FIELDS") == b""
    assert items[7].sections["BODY[]"] == b"yo"


def test_uid_sets_are_compact_ranges():
    """Consecutive UIDs collapse into ranges so a batch settle is one short command."""
    assert uid_set([3, 1, 2, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


def test_list_response_gives_names_and_flags():
    """LIST lines: flags lower-cased, quoted and modified UTF-7 names decoded."""
    lines = [
        b'LIST (\\HasNoChildren) "/" INBOX',
        b'LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'LIST (\\Noselect \\HasChildren) "/" "Archive"',
        b'LIST (\\HasNoChildren) "/" "Archive/Gr&APw-n"',
        b"List completed.",
    ]
    listed = parse_list(lines)
    assert [f.name for f in listed] == ["INBOX", "Sent", "Archive", "Archive/Gr\u00fcn"]
    assert "\\sent" in listed[1].flags


def test_receiving_folders_skip_sent_drafts_trash_by_flag_and_name_and_keep_junk():
    """INBOX first, subfolders and Junk kept; Sent/Drafts/Trash skipped by SPECIAL-USE or name."""
    lines = [
        b'LIST (\\HasNoChildren) "/" "Projects/A"',
        b'LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'LIST (\\HasNoChildren \\Sent) "/" "Gesendet"',
        b'LIST (\\HasNoChildren) "/" "Deleted Items"',
        b'LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'LIST (\\HasNoChildren) "/" "INBOX"',
        b'LIST (\\HasNoChildren) "/" "Processed"',
        b'LIST (\\Noselect) "/" "Projects"',
    ]
    assert wanted_folders(parse_list(lines), exclude={"Processed"}) == [
        "INBOX",
        "Junk",
        "Projects/A",
    ]


@given(st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t))
def test_mailbox_decoding_reverses_encoding(name):
    """decode_mailbox(encode_mailbox(x)) == x (quotes removed)."""
    wire = encode_mailbox(name)
    if wire.startswith('"'):
        wire = wire[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    assert decode_mailbox(wire) == name
