"""Customer mail for the demo mailbox and the end-to-end tests: one builder, not a copy each."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid


def customer_mail(to: str, subject: str, *, body: str = "Where is my order?\n") -> bytes:
    """A plain-text message from Alice Customer to ``to``, with a fresh Message-ID and Date."""
    message = EmailMessage()
    message["From"] = "Alice Customer <alice@customer.example>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="customer.example")
    message["Date"] = formatdate(localtime=False)
    message.set_content(body)
    return message.as_bytes()
