"""The Graph mail half: mailboxes, folders, delta, $value, settle, send, upload sessions."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any
from urllib.parse import quote, unquote

from devstack.graph.model import (
    ATTACHMENT_POST_LIMIT_BYTES,
    DISPLAY_NAMES,
    REQUEST_LIMIT_BYTES,
    WELL_KNOWN,
    Folder,
    GraphError,
    Mailbox,
    SentMail,
    StandIn,
    StoredMessage,
    Upload,
    b64url,
    new_id,
    unb64url,
)


class ExchangeMail(StandIn):
    """Mailboxes with folders, messages and a change log; what was sent."""

    _mailboxes: dict[str, Mailbox]
    _groups: set[str]
    _uploads: dict[str, Upload]
    _throttled: dict[str, list[tuple[int, float]]]
    _lost_answers: list[str]
    page_size: int
    sent: list[SentMail]
    requests: list[tuple[str, str]]

    # --- arranging a scene ---

    def add_mailbox(self, address: str) -> None:
        with self._lock:
            root = new_id("AQMkRoot")
            box = Mailbox(address=address.casefold(), root_id=root)
            for name in WELL_KNOWN:
                folder = Folder(new_id("AQMk"), DISPLAY_NAMES[name], root, well_known=name)
                box.folders[folder.id] = folder
            self._mailboxes[box.address] = box

    def add_group(self, address: str) -> None:
        """A distribution group: has an address, but no mailbox Graph can open."""
        with self._lock:
            self._groups.add(address.casefold())

    def add_folder(self, address: str, name: str, *, parent: str = "inbox") -> str:
        with self._lock:
            box = self._box(address)
            folder = Folder(new_id("AQMk"), name, self._folder(box, parent).id)
            box.folders[folder.id] = folder
            return folder.id

    def folder_id(self, address: str, name: str) -> str:
        with self._lock:
            return self._folder(self._box(address), name).id

    def deliver(self, address: str, mime: bytes, *, folder: str = "inbox") -> str:
        """Put a message into a folder (well-known name, display name or id); its Graph id."""
        with self._lock:
            box = self._box(address)
            target = self._folder(box, folder)
            message = StoredMessage(new_id(), target.id, mime)
            box.messages[message.id] = message
            self._changed(box, target.id, message.id)
            return message.id

    def remove(self, address: str, message_id: str) -> None:
        """Another client deletes a message for good."""
        with self._lock:
            box = self._box(address)
            message = box.messages.pop(message_id)
            self._changed(box, message.folder_id, message_id)

    def messages(self, address: str, folder: str = "inbox") -> list[tuple[str, bool]]:
        """(id, isRead) of the messages in a folder, oldest first."""
        with self._lock:
            box = self._box(address)
            target = self._folder(box, folder)
            return [(m.id, m.is_read) for m in box.messages.values() if m.folder_id == target.id]

    def forget_sync_state(self, address: str) -> None:
        """Graph forgot the mailbox's delta tokens (expired): the next use answers 410."""
        with self._lock:
            self._box(address).sync_generation += 1

    def throttle(
        self, address: str, *, times: int = 1, retry_after_s: float = 1.0, status: int = 429
    ) -> None:
        """The next ``times`` Graph requests for this mailbox are refused with Retry-After."""
        with self._lock:
            self._throttled.setdefault(address.casefold(), []).extend(
                [(status, retry_after_s)] * times
            )

    def lose_answers(self, fragment: str, *, times: int = 1) -> None:
        """The next ``times`` requests whose path contains ``fragment`` are carried out, but the
        connection is closed instead of answering (the client cannot know what happened)."""
        with self._lock:
            self._lost_answers.extend([fragment] * times)

    def answer_lost(self, path: str) -> bool:
        """Whether this request's answer is to be lost (used up when it is)."""
        with self._lock:
            for index, fragment in enumerate(self._lost_answers):
                if fragment in path:
                    del self._lost_answers[index]
                    return True
            return False

    def graph_requests(self, fragment: str) -> list[tuple[str, str]]:
        with self._lock:
            return [r for r in self.requests if fragment in r[1]]

    # --- internals (lock held) ---

    def _changed(self, box: Mailbox, folder_id: str, message_id: str) -> None:
        self._seq += 1
        box.changes.append((self._seq, folder_id, message_id))

    def _box(self, address: str) -> Mailbox:
        box = self._mailboxes.get(unquote(address).casefold())
        if box is None:
            raise GraphError(
                404, "ErrorInvalidUser", f"The requested user '{unquote(address)}' is invalid."
            )
        return box

    def _folder(self, box: Mailbox, ref: str) -> Folder:
        ref = unquote(ref)
        if ref.casefold() == "msgfolderroot":
            return Folder(box.root_id, "Top of Information Store", "")
        for folder in box.folders.values():
            if ref in {folder.id, folder.well_known} or folder.name.casefold() == ref.casefold():
                return folder
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    def _message(self, box: Mailbox, message_id: str) -> StoredMessage:
        message = box.messages.get(unquote(message_id))
        if message is None:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return message

    def user(self, address: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            return {
                "id": hashlib.sha256(box.address.encode()).hexdigest()[:32],
                "mail": box.address,
                "userPrincipalName": box.address,
                "displayName": box.address.split("@")[0],
            }

    def folders(self, address: str, parent: str | None) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            parent_id = box.root_id if parent is None else self._folder(box, parent).id
            return {
                "value": [
                    self._folder_json(box, f)
                    for f in box.folders.values()
                    if f.parent_id == parent_id
                ]
            }

    def folder(self, address: str, ref: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            return self._folder_json(box, self._folder(box, ref))

    def _folder_json(self, box: Mailbox, folder: Folder) -> dict[str, Any]:
        inside = [m for m in box.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.name,
            "parentFolderId": folder.parent_id,
            "childFolderCount": sum(1 for f in box.folders.values() if f.parent_id == folder.id),
            "unreadItemCount": sum(1 for m in inside if not m.is_read),
            "totalItemCount": len(inside),
            "isHidden": False,
        }

    def delta(
        self, address: str, folder_ref: str, query: dict[str, str], page_size: int | None
    ) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            if "$skiptoken" in query:
                state = json.loads(unb64url(query["$skiptoken"]))
            else:
                folder_id = self._folder(box, folder_ref).id
                since = None
                generation = box.sync_generation
                if "$deltatoken" in query:
                    token = json.loads(unb64url(query["$deltatoken"]))
                    folder_id, since, generation = token["f"], token["s"], token.get("g", 0)
                state = {"f": folder_id, "from": since, "to": self._seq, "o": 0, "g": generation}
            if state.get("g", 0) != box.sync_generation:
                raise GraphError(
                    410,
                    "SyncStateNotFound",
                    "The sync state generation is not found. Please perform a full sync.",
                )
            items = self._delta_items(box, state)
            size = page_size or self.page_size
            offset = int(state["o"])
            page = items[offset : offset + size]
            base = (
                f"{self.graph_url}/users/{quote(box.address, safe='@')}/mailFolders/"
                f"{state['f']}/messages/delta"
            )
            answer: dict[str, Any] = {
                "@odata.context": f"{self.graph_url}/$metadata#Collection(message)",
                "value": page,
            }
            if offset + size < len(items):
                token = b64url(json.dumps({**state, "o": offset + size}).encode())
                answer["@odata.nextLink"] = f"{base}?$skiptoken={token}"
            else:
                token = b64url(
                    json.dumps({"f": state["f"], "s": state["to"], "g": state["g"]}).encode()
                )
                answer["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
            return answer

    def _delta_items(self, box: Mailbox, state: dict[str, Any]) -> list[dict[str, Any]]:
        folder_id, since, until = state["f"], state["from"], state["to"]
        if since is None:
            changed = [m for m in box.messages.values() if m.folder_id == folder_id]
            return [self._message_json(m) for m in changed]
        latest = {  # later changes of a message overwrite earlier ones: one item each
            message_id: seq
            for seq, changed_folder, message_id in box.changes
            if since < seq <= until and changed_folder == folder_id
        }
        items: list[dict[str, Any]] = []
        for message_id in sorted(latest, key=latest.__getitem__):
            message = box.messages.get(message_id)
            if message is None or message.folder_id != folder_id:
                items.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": message_id,
                        "@removed": {"reason": "deleted"},
                    }
                )
            else:
                items.append(self._message_json(message))
        return items

    def _message_json(self, message: StoredMessage) -> dict[str, Any]:
        headers = message_from_bytes(message.mime, policy=policy.compat32)

        def recipients(name: str) -> list[dict[str, Any]]:
            return [
                {"emailAddress": {"name": n, "address": a}}
                for n, a in getaddresses([str(v) for v in headers.get_all(name, [])])
                if a
            ]

        return {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{b64url(hashlib.sha256(message.mime).digest()[:12])}"',
            "id": message.id,
            "receivedDateTime": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(message.received_at)
            ),
            "subject": str(headers.get("Subject", "")),
            "internetMessageId": str(headers.get("Message-ID", "")),
            "isRead": message.is_read,
            "isDraft": message.is_draft,
            "parentFolderId": message.folder_id,
            "toRecipients": recipients("To"),
            "ccRecipients": recipients("Cc"),
            "bccRecipients": recipients("Bcc"),
        }

    def mime(self, address: str, message_id: str) -> bytes:
        with self._lock:
            return self._message(self._box(address), message_id).mime

    def patch(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            message = self._message(box, message_id)
            if "isRead" in body:
                message.is_read = bool(body["isRead"])
                self._changed(box, message.folder_id, message.id)
            return self._message_json(message)

    def move(self, address: str, message_id: str, destination: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            message = self._message(box, message_id)
            target = self._folder(box, destination)
            del box.messages[message.id]
            self._changed(box, message.folder_id, message.id)
            moved = StoredMessage(new_id(), target.id, message.mime, message.is_read)
            box.messages[moved.id] = moved
            self._changed(box, target.id, moved.id)
            return self._message_json(moved)

    def delete(self, address: str, message_id: str) -> None:
        self.move(address, message_id, "deleteditems")

    def send_mail(self, address: str, mime: bytes) -> None:
        with self._lock:
            box = self._box(address)
            self.sent.append(SentMail(box.address, mime, "sendMail"))
            self._store_sent(box, mime)

    def _store_sent(self, box: Mailbox, mime: bytes) -> None:
        sent = StoredMessage(new_id(), self._folder(box, "sentitems").id, mime, is_read=True)
        box.messages[sent.id] = sent
        self._changed(box, sent.folder_id, sent.id)

    def create_draft(self, address: str, mime: bytes) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            draft = StoredMessage(new_id(), self._folder(box, "drafts").id, mime, is_draft=True)
            box.messages[draft.id] = draft
            return self._message_json(draft)

    def add_attachment(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            message = self._message(self._box(address), message_id)
            content = base64.b64decode(body.get("contentBytes", ""))
            if len(content) > ATTACHMENT_POST_LIMIT_BYTES:
                raise GraphError(
                    413,
                    "ErrorRequestEntityTooLarge",
                    "Attachments over 3 MB need an upload session.",
                )
            message.attachments.append(
                (str(body.get("name", "")), str(body.get("contentType", "")), content)
            )
            return {"id": new_id("AAMkAtt"), "name": body.get("name"), "size": len(content)}

    def create_upload(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            self._message(box, message_id)
            item = body.get("AttachmentItem") or {}
            if item.get("attachmentType") != "file" or not item.get("name") or not item.get("size"):
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    "AttachmentItem needs attachmentType file, name and size.",
                )
            session = b64url(secrets.token_bytes(24))
            self._uploads[session] = Upload(
                box.address,
                unquote(message_id),
                str(item["name"]),
                str(item.get("contentType", "application/octet-stream")),
                int(item["size"]),
            )
            return {
                "@odata.context": f"{self.graph_url}/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": (
                    f"{self.base_url}/upload/{session}?authtoken={b64url(secrets.token_bytes(16))}"
                ),
                "expirationDateTime": time.strftime(
                    "%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(time.time() + 900)
                ),
                "nextExpectedRanges": ["0-"],
            }

    def upload(
        self, session: str, content_range: str, chunk: bytes, *, authorised: bool
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        with self._lock:
            upload = self._uploads.get(session)
            if upload is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The upload session was not found or expired."
                )
            if authorised:
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Do not send an Authorization header with the upload URL.",
                )
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range.strip())
            if match is None:
                raise GraphError(400, "InvalidRange", "Content-Range is missing or malformed.")
            start, end, total = (int(g) for g in match.groups())
            if start != len(upload.data) or end - start + 1 != len(chunk) or total != upload.size:
                raise GraphError(
                    416, "InvalidRange", f"Expected range starting at {len(upload.data)}."
                )
            if len(chunk) > REQUEST_LIMIT_BYTES:
                raise GraphError(413, "ErrorRequestEntityTooLarge", "A chunk may be at most 4 MB.")
            upload.data.extend(chunk)
            if len(upload.data) < upload.size:
                return (
                    200,
                    {
                        "expirationDateTime": time.strftime(
                            "%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(time.time() + 900)
                        ),
                        "nextExpectedRanges": [f"{len(upload.data)}-"],
                    },
                    {},
                )
            del self._uploads[session]
            box = self._box(upload.mailbox)
            message = self._message(box, upload.message_id)
            message.attachments.append((upload.name, upload.content_type, bytes(upload.data)))
            location = (
                f"{self.graph_url}/users('{box.address}')/messages('{message.id}')/"
                f"attachments('{new_id('AAMkAtt')}')"
            )
            return 201, None, {"Location": location}

    def send_draft(self, address: str, message_id: str) -> None:
        with self._lock:
            box = self._box(address)
            draft = self._message(box, message_id)
            parsed = message_from_bytes(draft.mime, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            for name, content_type, data in draft.attachments:
                maintype, _, subtype = content_type.partition("/")
                parsed.add_attachment(
                    data,
                    maintype=maintype or "application",
                    subtype=subtype or "octet-stream",
                    filename=name,
                )
            mime = parsed.as_bytes(policy=policy.SMTP)
            del box.messages[draft.id]
            self.sent.append(SentMail(box.address, mime, "draft", tuple(draft.attachments)))
            self._store_sent(box, mime)
