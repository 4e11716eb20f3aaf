"""HTTP: the routes of both halves, Microsoft's form_post page, and the request handler."""

from __future__ import annotations

import base64
import html
import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

from devstack.graph.model import (
    REQUEST_LIMIT_BYTES,
    GraphError,
    new_id,
)

if TYPE_CHECKING:
    from devstack.graph.server import LocalGraph


def form_post_page(action: str, fields: dict[str, str]) -> str:
    """Microsoft's ``response_mode=form_post`` answer: a page that posts the fields onward."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}" />'
        for k, v in fields.items()
    )
    return (
        "<html><head><title>Working...</title></head><body>"
        f'<form method="POST" name="hiddenform" action="{html.escape(action)}">{inputs}'
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<input type="submit" value="Submit" /></noscript></form>'
        "<script>document.forms[0].submit();</script></body></html>"
    )


def read_form_post(page: str) -> tuple[str, dict[str, str]]:
    """What a browser would post from a :func:`form_post_page`: (action URL, fields)."""
    action = re.search(r'<form[^>]*action="([^"]*)"', page)
    if action is None:
        raise ValueError("no form in the page")
    fields = dict(re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', page))
    return html.unescape(action[1]), {html.unescape(k): html.unescape(v) for k, v in fields.items()}


_USER = r"/v1\.0/users/(?P<user>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), name)
    for m, p, name in [
        ("GET", r"/common/discovery/instance", "instance"),
        ("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", "openid"),
        ("GET", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/authorize", "authorize"),
        ("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/authorize", "sign_in"),
        ("GET", r"/(?P<tenant>[^/]+)/discovery/v2\.0/keys", "keys"),
        ("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", "token"),
        ("PUT", r"/upload/(?P<session>[^/]+)", "upload"),
        ("GET", _USER, "user"),
        ("GET", _USER + r"/mailFolders", "folders"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)/childFolders", "children"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)/messages/delta", "delta"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)", "folder"),
        ("GET", _USER + r"/messages/(?P<id>[^/]+)/\$value", "value"),
        ("PATCH", _USER + r"/messages/(?P<id>[^/]+)", "patch"),
        ("DELETE", _USER + r"/messages/(?P<id>[^/]+)", "delete"),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/move", "move"),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/send", "send"),
        (
            "POST",
            _USER + r"/messages/(?P<id>[^/]+)/attachments/createUploadSession",
            "create_upload",
        ),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/attachments", "attach"),
        ("POST", _USER + r"/messages", "create"),
        ("POST", _USER + r"/sendMail", "send_mail"),
    ]
]
_PERMISSION = {"send_mail": "Mail.Send", "send": "Mail.Send"}


class Handler(BaseHTTPRequestHandler):
    graph: ClassVar[LocalGraph]
    protocol_version = "HTTP/1.1"
    _lose_answer = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the request list on :class:`LocalGraph` is the log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        """CORS preflight: browser apps (public clients) may call discovery, keys and token."""
        self._send(
            204,
            b"",
            "text/plain",
            headers={
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.graph._lock:  # noqa: SLF001 - the handler is part of the server
            self.graph.requests.append((method, url.path))
        self._lose_answer = self.graph.answer_lost(url.path)
        route = next(
            (
                (name, match.groupdict())
                for route_method, pattern, name in _ROUTES
                if route_method == method and (match := pattern.fullmatch(url.path))
            ),
            None,
        )
        try:
            if route is None:
                self._route("unknown", {"path": url.path}, query, body)
            else:
                self._route(route[0], route[1], query, body)
        except GraphError as exc:
            if exc.oauth is not None and url.path.endswith("/authorize"):
                self._send(exc.status, exc.oauth["error_description"].encode(), "text/html")
                return
            self._json(exc.status, exc.body(), headers=exc.headers)

    def _route(  # noqa: C901, PLR0911, PLR0912, PLR0915 - one table of endpoints
        self, name: str, args: dict[str, str], query: dict[str, str], body: bytes
    ) -> None:
        graph = self.graph
        if name == "unknown":
            raise GraphError(
                400, "BadRequest", f"Resource not found for the segment '{args['path']}'."
            )
        if name == "instance":
            self._json(200, graph.instance_discovery(query))
            return
        if name == "openid":
            self._json(200, graph.openid_configuration(args["tenant"]))
            return
        if name in {"keys", "sign_in"}:
            self._browser_sign_in(name, args, query, body)
            return
        if name == "authorize":
            form_page = graph.sign_in_page(args["tenant"], query)
            if form_page is not None:
                self._send(200, form_page.encode(), "text/html; charset=utf-8")
                return
            redirect, params = graph.authorize(args["tenant"], query)
            if query.get("response_mode") == "form_post":  # the browser posts the answer
                self._send(200, form_post_page(redirect, params).encode(), "text/html")
            else:
                location = f"{redirect}{'&' if '?' in redirect else '?'}{urlencode(params)}"
                self._send(302, b"", "text/html", headers={"Location": location})
            return
        if name == "token":
            form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
            self._json(200, graph.token(args["tenant"], form))
            return
        if name == "upload":
            status, answer, headers = graph.upload(
                args["session"],
                self.headers.get("Content-Range", ""),
                body,
                authorised="Authorization" in self.headers,
            )
            if answer is None:
                self._send(status, b"", "application/json", headers=headers)
            else:
                self._json(status, answer, headers=headers)
            return
        user = args["user"]
        graph.authenticate(
            self.headers.get("Authorization"), user, _PERMISSION.get(name, "Mail.ReadWrite")
        )
        if name in {"send_mail", "create"} and len(body) > REQUEST_LIMIT_BYTES:
            raise GraphError(
                413, "ErrorRequestEntityTooLarge", "The request exceeds the 4 MB limit."
            )
        if name == "user":
            self._json(200, graph.user(user))
        elif name == "folders":
            self._json(200, graph.folders(user, None))
        elif name == "children":
            self._json(200, graph.folders(user, args["folder"]))
        elif name == "folder":
            self._json(200, graph.folder(user, args["folder"]))
        elif name == "delta":
            prefer = re.search(r"odata\.maxpagesize=(\d+)", self.headers.get("Prefer", ""))
            self._json(
                200, graph.delta(user, args["folder"], query, int(prefer[1]) if prefer else None)
            )
        elif name == "value":
            self._send(200, graph.mime(user, args["id"]), "text/plain")
        elif name == "patch":
            self._json(200, graph.patch(user, args["id"], json.loads(body or b"{}")))
        elif name == "delete":
            graph.delete(user, args["id"])
            self._send(204, b"", "application/json")
        elif name == "move":
            destination = str(json.loads(body or b"{}").get("destinationId", ""))
            self._json(201, graph.move(user, args["id"], destination))
        elif name == "send":
            graph.send_draft(user, args["id"])
            self._send(202, b"", "application/json")
        elif name == "create_upload":
            self._json(201, graph.create_upload(user, args["id"], json.loads(body or b"{}")))
        elif name == "attach":
            self._json(201, graph.add_attachment(user, args["id"], json.loads(body or b"{}")))
        elif name in {"send_mail", "create"}:
            mime = self._mime_body(body)
            if name == "send_mail":
                graph.send_mail(user, mime)
                self._send(202, b"", "application/json")
            else:
                self._json(201, graph.create_draft(user, mime))

    def _browser_sign_in(
        self, name: str, args: dict[str, str], query: dict[str, str], body: bytes
    ) -> None:
        """What a browser OIDC client adds: the JWKS and the sign-in form's answer."""
        graph = self.graph
        if name == "keys":
            self._json(200, graph.jwks())
            return
        form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        login = form.get("login", "").strip()
        if not graph.has_user(login):
            error = f"'{login}' is not a user of this directory." if login else "Enter a user."
            again = graph.sign_in_page(args["tenant"], query, error=error) or ""
            self._send(200, again.encode(), "text/html; charset=utf-8")
            return
        redirect, params = graph.authorize(args["tenant"], query, login=login)
        location = f"{redirect}{'&' if '?' in redirect else '?'}{urlencode(params)}"
        self._send(303, b"", "text/html", headers={"Location": location})

    def _mime_body(self, body: bytes) -> bytes:
        if not self.headers.get("Content-Type", "").startswith("text/plain"):
            raise GraphError(
                400,
                "ErrorInvalidRequest",
                "This local stand-in accepts only MIME (Content-Type: text/plain, base64).",
            )
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise GraphError(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            ) from None

    def _json(self, status: int, body: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers=headers)

    def _send(
        self, status: int, body: bytes, content_type: str, *, headers: dict[str, str] | None = None
    ) -> None:
        if self._lose_answer:  # carried out; the answer never arrives
            self.close_connection = True
            return
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", new_id(""))
        allowed = self.graph.cors_origin(self.headers.get("Origin"))
        if allowed:
            self.send_header("Access-Control-Allow-Origin", allowed)
            self.send_header("Vary", "Origin")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
