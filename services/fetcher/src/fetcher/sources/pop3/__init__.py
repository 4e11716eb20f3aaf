"""POP3 source, as a package of its four ideas (like :mod:`fetcher.sources.imap`):

- :mod:`~fetcher.sources.pop3.errors`: ``-ERR`` answers and connection failures -> pipeline errors;
- :mod:`~fetcher.sources.pop3.parsing`: pure UIDL / LIST parsing and the cursor's advance;
- :mod:`~fetcher.sources.pop3.client`: the asyncio client (pipelining, streamed blocks);
- :mod:`~fetcher.sources.pop3.source`: :class:`Pop3Source`, a :class:`~fetcher.sources.MailSource`
  (what the cursor means, the order of deletes: its module docstring).

The names below are the package's public face (``from fetcher.sources.pop3 import Pop3Source``).
"""

from fetcher.sources.pop3.client import BlockStream, Pop3Protocol
from fetcher.sources.pop3.errors import Pop3ProtocolError, Pop3Refused, map_pop3_error
from fetcher.sources.pop3.parsing import advance_uidls, parse_list, parse_uidl
from fetcher.sources.pop3.source import Pop3Options, Pop3Source, Pop3SourceFactory

__all__ = [
    "BlockStream",
    "Pop3Options",
    "Pop3Protocol",
    "Pop3ProtocolError",
    "Pop3Refused",
    "Pop3Source",
    "Pop3SourceFactory",
    "advance_uidls",
    "map_pop3_error",
    "parse_list",
    "parse_uidl",
]
