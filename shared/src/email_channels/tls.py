"""Client TLS contexts: certificates verified by default, off only by an explicit channel flag."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from email_channels.errors import PermanentError

if TYPE_CHECKING:
    from pathlib import Path


def client_context(*, verify: bool = True, extra_ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts the system store (plus ``extra_ca_file`` if given).

    ``verify=False`` is only ever passed from a channel's explicit ``verify_tls: false``.
    """
    context = ssl.create_default_context()
    if extra_ca_file is not None:
        context.load_verify_locations(cafile=str(extra_ca_file))
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class CaFileUnusable(PermanentError):
    """EMAIL_CHANNELS_CA_FILE cannot be loaded: an operator must fix the deployment."""


def client_contexts(*, extra_ca_file: Path | None = None) -> dict[bool, ssl.SSLContext]:
    """Both client contexts, keyed by ``verify``, built once at start-up and shared by every
    connection (loading the CA bundle per connection is slow, and a bad CA file should stop
    the service with a clear message rather than fail each channel)."""
    try:
        return {
            verify: client_context(verify=verify, extra_ca_file=extra_ca_file)
            for verify in (True, False)
        }
    except (OSError, ssl.SSLError) as exc:
        raise CaFileUnusable(
            f"EMAIL_CHANNELS_CA_FILE={extra_ca_file} cannot be loaded: {exc}"
        ) from exc
