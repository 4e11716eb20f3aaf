"""Writing ``email.outbound`` as a campaign service.

:func:`reply_to` builds the answer to a routed email with the threading a mail client expects
(``In-Reply-To`` = the original Message-ID, ``References`` = the original's references plus its
Message-ID, ``Re:`` once), addressed to Reply-To or else From, in the same conversation (the record
key, which keeps replies of one conversation in order) and sent from the same channel.

The ``outbound_id`` is the idempotency key: the sender sends each id at most once. Derive it from
what you answer (:func:`outbound_id_for`), never from a random value, so a campaign service that
crashes after publishing and publishes again cannot make the customer receive two answers.
"""

from __future__ import annotations

import hashlib
import re

from email_channels.events import Address, OutboundEmail, RoutedEmail

_RE_PREFIX = re.compile(r"^\s*(re|aw|sv|antw)\s*:", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n]+")


def outbound_id_for(email_id: str, purpose: str) -> str:
    """A stable idempotency key for "the ``purpose`` answer to ``email_id``"."""
    digest = hashlib.sha256(f"{purpose}\0{email_id}".encode()).hexdigest()[:32]
    return f"{purpose}-{digest}"


def reply_subject(subject: str | None) -> str:
    """``Re: <subject>``, without stacking prefixes, on one line."""
    text = _LINE_BREAKS.sub(" ", subject or "").strip()
    return text if _RE_PREFIX.match(text) else f"Re: {text}".rstrip()


def reply_to(
    email: RoutedEmail,
    *,
    purpose: str,
    text_body: str | None = None,
    html_body: str | None = None,
) -> OutboundEmail:
    """The answer to ``email`` from its channel, keyed for idempotency by ``purpose``."""
    recipients = list(email.reply_to) or ([email.from_] if email.from_ else [])
    if not recipients:
        raise ValueError(f"email {email.email_id} has neither Reply-To nor From: nobody to answer")
    references = list(email.references)
    if email.message_id and email.message_id not in references:
        references.append(email.message_id)
    return OutboundEmail(
        outbound_id=outbound_id_for(email.email_id, purpose),
        channel_id=email.channel_id,
        conversation_id=email.conversation_id,
        to=[Address(name=r.name, address=r.address) for r in recipients],
        subject=reply_subject(email.subject),
        text_body=text_body,
        html_body=html_body,
        in_reply_to=email.message_id,
        references=references,
    )
