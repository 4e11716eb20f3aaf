"""Client TLS contexts: certificates verified by default, off only by an explicit channel flag."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

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
