"""Which parts of a message are its body: the text a mail client would show.

Rules (each has a test in ``tests/test_bodies.py``):

1. A part with ``Content-Disposition: attachment`` is never a body.
2. A single ``text/plain`` or ``text/html`` message is its own body.
3. ``multipart/alternative``: alternatives are in increasing order of preference, so the
   *last* plain and the *last* html alternative are the bodies (a nested multipart
   alternative counts as one alternative, read by these rules).
4. ``multipart/related``: only the root is shown: the part whose Content-ID is the ``start``
   parameter, else the first part; the rest are inline resources (attachments).
5. ``multipart/mixed`` and every other multipart (signed, report, unknown): the first part
   that yields a body is the body; later *inline* text parts of the same kind (no
   disposition ``attachment``, no file name) are shown after it by clients and are appended
   (Apple Mail splits a body around inline images this way; list footers too).
6. A text/plain body that is empty or only blank is no body: the text is then the html
   converted to text (:func:`html_to_text`).

Nesting deeper than the limit is not descended into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser


@dataclass
class BodyParts:
    """The parts that make the text body and the html body, in order."""

    plain: list[Message] = field(default_factory=list)
    html: list[Message] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.plain or self.html)


def is_attachment(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment"
    except Exception:  # a malformed disposition header: read the part as inline
        return False


def subparts(part: Message) -> list[Message]:
    """The sub-messages of a multipart (or message/*) part; [] for a leaf.

    Never ``get_payload()`` on a leaf: compat32 decodes 8-bit leaf payloads with the part's
    charset parameter there, which raises for a charset name with a NUL in it."""
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    return (
        [child for child in payload if isinstance(child, Message)]
        if isinstance(payload, list)
        else []
    )


def _has_filename(part: Message) -> bool:
    try:
        return part.get_filename() is not None
    except Exception:
        return False


def choose_bodies(part: Message, *, max_depth: int, depth: int = 0) -> BodyParts:
    """The body parts of ``part`` by the module's rules."""
    content_type = part.get_content_type()
    if is_attachment(part):
        chosen = BodyParts()
    elif content_type == "text/plain":
        chosen = BodyParts(plain=[part])
    elif content_type == "text/html":
        chosen = BodyParts(html=[part])
    elif not part.is_multipart() or content_type == "message/rfc822" or depth >= max_depth:
        chosen = BodyParts()
    elif part.get_content_subtype() == "alternative":
        chosen = _alternative(subparts(part), max_depth, depth + 1)
    elif part.get_content_subtype() == "related":
        root = _related_root(part, subparts(part))
        chosen = choose_bodies(root, max_depth=max_depth, depth=depth + 1) if root else BodyParts()
    else:
        chosen = _mixed(subparts(part), max_depth, depth + 1)
    return chosen


def _alternative(children: list[Message], max_depth: int, depth: int) -> BodyParts:
    chosen = BodyParts()
    for child in children:
        found = choose_bodies(child, max_depth=max_depth, depth=depth)
        chosen.plain = found.plain or chosen.plain
        chosen.html = found.html or chosen.html
    return chosen


def _mixed(children: list[Message], max_depth: int, depth: int) -> BodyParts:
    chosen = BodyParts()
    for child in children:
        if not chosen:
            chosen = choose_bodies(child, max_depth=max_depth, depth=depth)
            continue
        if is_attachment(child) or _has_filename(child):
            continue
        child_type = child.get_content_type()
        if child_type == "text/plain" and chosen.plain:
            chosen.plain.append(child)
        elif child_type == "text/html" and chosen.html:
            chosen.html.append(child)
    return chosen


def _related_root(part: Message, children: list[Message]) -> Message | None:
    start = part.get_param("start")
    if isinstance(start, str) and start.strip():
        for child in children:
            if str(child.get("content-id", "")).strip() == start.strip():
                return child
    return children[0] if children else None


def html_to_text(html: str, *, max_chars: int = 2_000_000) -> str:
    """The visible text of an html body (for matching; not a renderer). Reads ``max_chars``."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html[:max_chars])
        extractor.close()
    except Exception:  # html.parser is lenient; keep whatever was read
        return " ".join(extractor.chunks)
    return " ".join(extractor.chunks)


class _TextExtractor(HTMLParser):
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in self._HIDDEN:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.chunks.append(data.strip())
