"""Exchange Online transport (Microsoft Graph): sendMail, or a draft plus upload sessions.

The composed MIME goes to Graph as it is, so Message-ID, In-Reply-To and References (the
threading headers) travel unchanged; Bcc recipients, which the composer keeps out of the
headers, are written into a Bcc header of the copy submitted (Exchange strips it on delivery).

- MIME up to :data:`SENDMAIL_MAX_MIME_BYTES` (its base64 stays under Graph's 4 MB request
  limit): one ``POST /users/{mailbox}/sendMail`` with the base64 MIME.
- Larger (attachments over ~3 MB): the MIME without its attachments becomes a draft
  (``POST /users/{mailbox}/messages``); each attachment is added with a single POST when under
  3 MB, otherwise through ``createUploadSession`` and ranged PUTs of :data:`CHUNK_BYTES`
  (no bearer token: the upload URL carries its own); then ``POST .../send``. A failure before
  the send deletes the draft: the message is never half-sent.
- Attachments over :data:`MAX_ATTACHMENT_BYTES` in total (the brief's 20 MB) are rejected
  before any request: nothing is sent.
- Never twice: the intent (``before_data``) is awaited before the request that submits the
  message (sendMail, or the draft's ``send``); a draft is not mail, so building it comes first.
  When that request went out and its answer was lost
  (:class:`~email_channels.graph_client.GraphAnswerLost`), the outcome is unknown:
  :class:`~sender.errors.DeliveryUncertain`, never resent.

Errors: Graph's and httpx's are mapped by :mod:`email_channels.graph_client`; here only what a
refusal means for the message is decided (:func:`map_graph_send_error`). A throttled mailbox
(429/503 with ``Retry-After``): a pause of at most ``SENDER_GRAPH_THROTTLE_WAIT_S`` is waited out
in place for that mailbox (before the intent when the pause is already known; the refused
request is then repeated), a longer one defers the message at once to the retry topics, so one
mailbox never holds the sender for long.
"""

from __future__ import annotations

import base64
import contextlib
import copy
from email.message import Message
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any

import structlog

from email_channels.errors import ChannelMisconfigured, PipelineError
from email_channels.graph_client import (
    GraphAnswerLost,
    GraphClient,
    GraphNotFound,
    GraphRequestRefused,
)
from sender.errors import DeliveryUncertain, MessageRejected, ServerReply
from sender.transports.base import (
    BeforeData,
    ComposedEmail,
    Envelope,
    SendResult,
    TransportName,
)

if TYPE_CHECKING:
    from email.message import EmailMessage

    from email_channels.graph_auth import GraphTokens

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
SENDMAIL_MAX_MIME_BYTES = 3 * MiB
"""Up to this, one sendMail request: base64 makes it 4/3 larger, under Graph's 4 MB limit."""
ATTACHMENT_POST_MAX_BYTES = 3 * MiB - 1
"""An attachment under 3 MB is added with one POST; a larger one needs an upload session."""
CHUNK_BYTES = 10 * 320 * 1024
"""Upload chunk: a multiple of 320 KiB, under the 4 MB per-request limit."""
MAX_ATTACHMENT_BYTES = 20 * MiB
"""The brief's limit on attachments in total."""


class GraphTransport:
    """Sends as one channel's Exchange Online mailbox."""

    name: TransportName = "graph"

    def __init__(self, client: GraphClient, tokens: GraphTokens) -> None:
        self._client = client
        self._tokens = tokens

    def __repr__(self) -> str:
        return f"GraphTransport({self._client.mailbox})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self, email: ComposedEmail, *, before_data: BeforeData | None = None
    ) -> SendResult:
        submitted = with_bcc(email.message, email.envelope)
        attachments = list(submitted.iter_attachments())
        total = sum(len(attachment_bytes(part)) for part in attachments)
        if total > MAX_ATTACHMENT_BYTES:
            raise MessageRejected(
                f"attachments total {total} bytes, above the limit of {MAX_ATTACHMENT_BYTES} "
                "bytes; nothing was sent"
            )
        mime = wire_bytes(email)
        submit = _Submit(self._client, before_data)
        try:
            if len(mime) <= SENDMAIL_MAX_MIME_BYTES:
                await submit(
                    f"{self._client.user_path}/sendMail",
                    content=base64.b64encode(mime),
                    headers={"Content-Type": "text/plain"},
                )
                how = "sendMail"
            else:
                await self._send_with_uploads(submitted, submit)
                how = "draft+upload"
        except PipelineError as exc:
            raise map_graph_send_error(exc, submitted=submit.sent) from exc
        log.debug("graph accepted", mailbox=self._client.mailbox, via=how, size=len(mime))
        return SendResult(
            transport="graph",
            message_id=email.message_id,
            response=f"202 Accepted ({how})",
        )

    async def _send_with_uploads(self, message: EmailMessage, submit: _Submit) -> None:
        client = self._client
        draft_mime, attachments = without_attachments(message)
        if len(draft_mime) > SENDMAIL_MAX_MIME_BYTES:
            raise MessageRejected(
                f"the message without its attachments is {len(draft_mime)} bytes, above what "
                f"Graph takes in one request ({SENDMAIL_MAX_MIME_BYTES})"
            )
        created = await client.request(
            "POST",
            f"{client.user_path}/messages",
            content=base64.b64encode(draft_mime),
            headers={"Content-Type": "text/plain"},
        )
        draft = f"{client.user_path}/messages/{created.json()['id']}"
        try:
            for part in attachments:
                await self._attach(draft, part)
            await submit(f"{draft}/send")
        except BaseException as exc:
            refused = isinstance(exc, PipelineError) and not isinstance(exc, GraphAnswerLost)
            if not submit.sent or refused:  # a send whose outcome is unknown keeps its draft
                with contextlib.suppress(Exception):
                    await client.request("DELETE", draft)  # never leave a half-built draft
            raise

    async def _attach(self, draft: str, part: EmailMessage) -> None:
        client = self._client
        data = attachment_bytes(part)
        name = part.get_filename() or "attachment"
        item = {
            "name": name,
            "contentType": part.get_content_type(),
            "isInline": part.get_content_disposition() == "inline",
        }
        if part["Content-ID"]:
            item["contentId"] = str(part["Content-ID"]).strip("<>")
        if len(data) <= ATTACHMENT_POST_MAX_BYTES:
            await client.request(
                "POST",
                f"{draft}/attachments",
                json={
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    **item,
                    "contentBytes": base64.b64encode(data).decode("ascii"),
                },
            )
            return
        session = await client.request(
            "POST",
            f"{draft}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", **item, "size": len(data)}},
        )
        upload_url = str(session.json()["uploadUrl"])
        for start in range(0, len(data), CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            await client.request(
                "PUT",
                upload_url,
                content=chunk,
                headers={
                    "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}",
                    "Content-Type": "application/octet-stream",
                },
                authorised=False,  # the upload URL is pre-authenticated
            )


class _Submit:
    """The one request that hands the message over: the intent is awaited first, and whether
    it went out is remembered (after that, a lost answer is an unknown outcome)."""

    def __init__(self, client: GraphClient, before_data: BeforeData | None) -> None:
        self._client = client
        self._before_data = before_data
        self.sent = False

    async def __call__(
        self, path: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        await self._client.wait_for_mailbox()  # a short pause is waited out before the intent
        if self._before_data is not None:
            await self._before_data()
        self.sent = True
        await self._client.request("POST", path, content=content, headers=headers)


def wire_bytes(email: ComposedEmail) -> bytes:
    """The MIME Graph gets: the composer's checked bytes, with a Bcc header in front when the
    envelope has recipients the headers do not name (Graph sends to the header recipients)."""
    hidden = hidden_recipients(email.message, email.envelope)
    if not hidden:
        return email.data
    line = "Bcc: " + ", ".join(hidden)
    if "\r" in line or "\n" in line:  # envelope addresses are checked; never trust, though
        raise MessageRejected("a Bcc recipient contains a line break; nothing was sent")
    return line.encode("utf-8") + b"\r\n" + email.data


def hidden_recipients(message: EmailMessage, envelope: Envelope) -> list[str]:
    """Envelope recipients not named in To/Cc: the Bcc recipients."""
    named = {
        address.casefold()
        for _, address in getaddresses(
            [str(v) for h in ("To", "Cc") for v in message.get_all(h, [])]
        )
    }
    return [r for r in envelope.recipients if r.casefold() not in named]


def with_bcc(message: EmailMessage, envelope: Envelope) -> EmailMessage:
    """A copy with a Bcc header for envelope recipients not named in To/Cc (Graph sends to the
    recipients in the MIME headers); the draft of a large message is built from it."""
    hidden = hidden_recipients(message, envelope)
    if not hidden:
        return message
    submitted = copy.deepcopy(message)
    del submitted["Bcc"]
    submitted["Bcc"] = ", ".join(hidden)
    return submitted


def without_attachments(message: EmailMessage) -> tuple[bytes, list[EmailMessage]]:
    """The MIME with its attachment parts taken out, and those parts."""
    attachments = list(message.iter_attachments())
    if not attachments:
        return message.as_bytes(), []
    draft = copy.deepcopy(message)
    kept: list[Any] = [part for part in draft.iter_parts() if not part.is_attachment()]
    draft.set_payload(kept)
    return draft.as_bytes(), attachments


def attachment_bytes(part: EmailMessage) -> bytes:
    """An attachment's bytes as sent (transfer encoding undone, text not re-encoded)."""
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    inner = part.get_payload()  # message/rfc822: the attached message itself
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        return inner[0].as_bytes()
    return b""


def map_graph_send_error(exc: PipelineError, *, submitted: bool = False) -> PipelineError:
    """What a Graph refusal means for the message being sent (``submitted``: the request that
    hands it over went out)."""
    if submitted and isinstance(exc, GraphAnswerLost):
        return DeliveryUncertain(
            f"Graph's answer to the send was lost ({exc}); the message may have been delivered"
        )
    if isinstance(exc, GraphNotFound):
        return ChannelMisconfigured(
            f"the channel's mailbox cannot be opened (a distribution group cannot send, it has "
            f"no mailbox): {exc}",
            step="mailbox",
        )
    if isinstance(exc, GraphRequestRefused):
        return MessageRejected(
            f"Graph refused the message: {exc}", reply=ServerReply(None, f"{exc.status} {exc.code}")
        )
    return exc
