"""Pure IMAP protocol parsing and planning: no I/O, testable in milliseconds.

Responses arrive the way aioimaplib hands them over: ``* `` stripped from untagged lines, each
literal as a ``bytearray`` right after the line that announced it (``... {123}``), the tagged
completion text last.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aioimaplib import quoted

from email_channels.events import FetchCursor, FolderCursor, SourceIdentity, utcnow

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


@dataclass(frozen=True)
class FolderState:
    """What SELECT told us about a folder."""

    uidvalidity: int | None
    uidnext: int | None
    exists: int | None


_UIDVALIDITY: Final = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT: Final = re.compile(rb"\[UIDNEXT (\d+)\]")
EXISTS: Final = re.compile(rb"^(?:\* )?(\d+) EXISTS\b")
_FETCH_START: Final = re.compile(rb"^\d+ FETCH \(")
_LITERAL_SECTION: Final = re.compile(rb"(BODY\[[^\]]*\](?:<\d+>)?) \{\d+\}$")
_UID_ITEM: Final = re.compile(rb"\bUID (\d+)")
_SIZE_ITEM: Final = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LIST_LINE: Final = re.compile(rb'^LIST \(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.+)$')


def parse_select(lines: Sequence[bytes | bytearray]) -> FolderState:
    """UIDVALIDITY, UIDNEXT and EXISTS from a SELECT response."""
    uidvalidity = uidnext = exists = None
    for line in lines:
        if isinstance(line, bytearray):
            continue
        if match := _UIDVALIDITY.search(line):
            uidvalidity = int(match.group(1))
        elif match := _UIDNEXT.search(line):
            uidnext = int(match.group(1))
        elif match := EXISTS.match(line):
            exists = int(match.group(1))
    return FolderState(uidvalidity, uidnext, exists)


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """The numbers of a SEARCH response (aioimaplib strips ``* SEARCH``; the last line is the
    tagged completion text)."""
    numbers: set[int] = set()
    for line in lines[:-1]:
        numbers.update(int(token) for token in bytes(line).split() if token.isdigit())
    return sorted(numbers)


@dataclass
class FetchedItems:
    """One message's items of a FETCH response: its UID, RFC822.SIZE and literal sections.

    Sections are keyed as the server names them without partial offsets (``BODY[]``,
    ``BODY[HEADER]``, ``BODY[HEADER.FIELDS (TO CC)]``).
    """

    uid: int | None = None
    size: int | None = None
    sections: dict[str, bytes] = field(default_factory=dict)

    def section(self, prefix: str) -> bytes | None:
        """The first section whose name starts with ``prefix`` (e.g. ``BODY[HEADER.FIELDS``)."""
        return next((v for k, v in self.sections.items() if k.startswith(prefix)), None)


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[FetchedItems]:  # noqa: C901
    """Every message of a (UID) FETCH response, in the server's order.

    Unsolicited FETCH responses (flag changes of other messages) come out too, without the
    sections that were asked for; callers look messages up by UID.
    """
    messages: list[FetchedItems] = []
    texts: list[bytes] = []
    pending_section: str | None = None

    def finish() -> None:
        if messages:
            joined = b" ".join(texts)
            if match := _UID_ITEM.search(joined):
                messages[-1].uid = int(match.group(1))
            if match := _SIZE_ITEM.search(joined):
                messages[-1].size = int(match.group(1))

    for item in lines:
        if isinstance(item, bytearray):
            if pending_section is not None and messages:
                messages[-1].sections.setdefault(pending_section, bytes(item))
            pending_section = None
            continue
        if _FETCH_START.match(item):
            finish()
            messages.append(FetchedItems())
            texts = []
        elif not messages:
            continue
        texts.append(item)
        match = _LITERAL_SECTION.search(item)
        pending_section = match.group(1).decode("ascii", "replace") if match else None
        if pending_section is not None:
            pending_section = re.sub(r"<\d+>$", "", pending_section)
    finish()
    return messages


def parse_fetched_body(lines: Sequence[bytes | bytearray], uid: int) -> bytes | None:
    """The ``BODY[]`` literal of message ``uid`` in a UID FETCH response, None if absent.

    A server that leaves out the UID item: the only body there is.
    """
    with_body = [m for m in parse_fetch(lines) if "BODY[]" in m.sections]
    for message in with_body:
        if message.uid == uid:
            return message.sections["BODY[]"]
    if len(with_body) == 1 and with_body[0].uid is None:
        return with_body[0].sections["BODY[]"]
    return None


@dataclass(frozen=True)
class ListedFolder:
    """One line of a LIST response."""

    name: str
    flags: frozenset[str]


def parse_list(lines: Sequence[bytes | bytearray]) -> list[ListedFolder]:
    """Folders of a LIST response (names decoded from modified UTF-7)."""
    folders: list[ListedFolder] = []
    for line in lines:
        if isinstance(line, bytearray):
            continue
        raw = line if line.startswith(b"LIST ") else b"LIST " + line
        match = _LIST_LINE.match(raw)
        if match is None:
            continue
        flags = frozenset(
            flag.decode("ascii", "replace").lower() for flag in match.group(1).split()
        )
        name = match.group(3).strip()
        if name.startswith(b'"') and name.endswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        folders.append(ListedFolder(decode_mailbox(name.decode("ascii", "replace")), flags))
    return folders


@dataclass(frozen=True)
class FolderPlan:
    """Where to continue in a folder, and whether its UIDVALIDITY changed."""

    cursor: FolderCursor
    previous_uidvalidity: int | None = None

    @property
    def reset(self) -> bool:
        return self.previous_uidvalidity is not None


def plan_folder(current: FolderCursor | None, *, uidvalidity: int, uidnext: int) -> FolderPlan:
    """Decide where a folder's sync starts (pure).

    - never synced: from the beginning, every message in the folder is taken;
    - same UIDVALIDITY: after the last UID taken;
    - UIDVALIDITY changed: the server renumbered the folder, so the old UIDs say nothing about
      the new ones. The whole folder is taken again from UID 1; every UID present at that
      moment (up to ``UIDNEXT - 1``, kept in the cursor as ``recheck_through``) is checked
      against what the channel already published (Message-ID + sha256) before it is
      published again. Nothing is skipped on a guess.
    """
    if current is None:
        return FolderPlan(FolderCursor(uidvalidity=uidvalidity, last_uid=0))
    if current.uidvalidity == uidvalidity:
        return FolderPlan(current)
    return FolderPlan(
        FolderCursor(
            uidvalidity=uidvalidity, last_uid=0, recheck_through=max(uidnext - 1, 0) or None
        ),
        previous_uidvalidity=current.uidvalidity,
    )


def needs_recheck(cursor: FetchCursor, message: SourceIdentity) -> bool:
    """Was ``message`` present when its folder was renumbered (check it against what was
    already published)?"""
    folder = cursor.folders.get(message.folder or "INBOX")
    return (
        folder is not None
        and folder.uidvalidity == message.uidvalidity
        and folder.recheck_through is not None
        and (message.uid or 0) <= folder.recheck_through
    )


def advance_cursor(cursor: FetchCursor, messages: Iterable[SourceIdentity]) -> FetchCursor:
    """``cursor`` with each message's folder moved to its UID (pure; never moves backwards)."""
    folders = dict(cursor.folders)
    for message in messages:
        name = message.folder or "INBOX"
        uidvalidity = message.uidvalidity
        if uidvalidity is None:
            raise ValueError("an IMAP message identity needs its UIDVALIDITY")
        uid = message_uid(message)
        current = folders.get(name)
        recheck = None
        if current is not None and current.uidvalidity == uidvalidity:
            uid = max(uid, current.last_uid)
            recheck = current.recheck_through
        if recheck is not None and uid >= recheck:
            recheck = None  # every renumbered message was looked at
        folders[name] = FolderCursor(uidvalidity=uidvalidity, last_uid=uid, recheck_through=recheck)
    return cursor.model_copy(update={"folders": folders, "updated_at": utcnow()})


def message_uid(message: SourceIdentity) -> int:
    if message.uid is None:
        raise ValueError("an IMAP message identity needs its UID")
    return message.uid


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set: ``1:3,7,9:10`` for 1, 2, 3, 7, 9, 10."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev > start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev > start else str(start))
    return ",".join(parts)


def encode_mailbox(name: str) -> str:
    """A folder name as an IMAP argument: modified UTF-7 (RFC 3501 §5.1.3), then quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:  # noqa: PLR2004 - printable US-ASCII
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return str(quoted("".join(out)))


def decode_mailbox(name: str) -> str:
    """A modified UTF-7 folder name (as LIST sends it) back to text."""

    def decode(match: re.Match[str]) -> str:
        chunk = match.group(1)
        if not chunk:
            return "&"
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        return base64.b64decode(padded).decode("utf-16-be", "replace")

    return re.sub(r"&([A-Za-z0-9+,]*)-", decode, name)
