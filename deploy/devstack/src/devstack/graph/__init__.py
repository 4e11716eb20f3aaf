"""A local HTTPS stand-in for the Microsoft identity platform and the Graph mail API.

Microsoft's services cannot be reached from here, so Exchange Online support is tested against
this server, with the **real msal** and our real httpx client talking to it over TLS (the
certificate comes from the devstack test CA). It follows Microsoft's documented request and
response shapes for the endpoints the product uses, and nothing more:

identity platform (``https://127.0.0.1:<port>/<tenant>/...``)
    instance discovery (``/common/discovery/instance``), OIDC discovery
    (``/<tenant>/v2.0/.well-known/openid-configuration``), ``/oauth2/v2.0/authorize`` (no UI:
    the registered user consents at once and is redirected with ``code`` and ``state``;
    an unregistered redirect URI gets Microsoft's AADSTS50011 page), ``/oauth2/v2.0/token``
    with the client_credentials, authorization_code (PKCE S256 checked) and refresh_token grants;
    refresh tokens rotate on every use (``strict_rotation`` also invalidates the old one);
    errors as ``{"error", "error_description": "AADSTSnnnn: ...", "error_codes"}``. For a
    browser OIDC client (``AppRegistration.public_client``): no secret, CORS for the app's
    redirect origins, a small sign-in form for users of :meth:`add_user`, and access tokens for
    an API the app exposes (``api_audience``) carrying the user's app roles. Tokens are signed
    RS256 with the key published at ``/<tenant>/discovery/v2.0/keys``.

Graph (``https://127.0.0.1:<port>/v1.0/users/<mailbox>/...``)
    ``mailFolders`` (+ ``childFolders``, well-known names), ``messages/delta`` per folder with
    ``Prefer: odata.maxpagesize``, ``@odata.nextLink`` / ``@odata.deltaLink`` and ``@removed``,
    ``messages/{id}/$value`` (MIME), PATCH ``isRead``, ``move`` (new id, as Exchange does),
    DELETE (to Deleted Items), ``sendMail`` with base64 MIME (4 MB request limit), drafts from
    MIME, ``attachments`` (< 3 MB), ``createUploadSession`` + ranged PUT chunks (<= 4 MB, no
    bearer token), ``send``; 429/503 with ``Retry-After`` on demand (:meth:`LocalGraph.throttle`);
    401 for expired or revoked tokens, 403 without the permission, 404 ``ErrorInvalidUser`` for
    an unknown mailbox or a distribution group.

Not reproduced: JSON (non-MIME) sendMail bodies, change notifications (webhooks), $batch,
consent screens and multi-factor prompts, single sign-on sessions, conditional access, and
Graph's eventual consistency (a change shows in the very next delta).
"""

from devstack.graph.http import form_post_page, read_form_post
from devstack.graph.model import AppRegistration, GraphError, SentMail
from devstack.graph.server import LocalGraph

__all__ = [
    "AppRegistration",
    "GraphError",
    "LocalGraph",
    "SentMail",
    "form_post_page",
    "read_form_post",
]
