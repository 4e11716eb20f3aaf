"""IMAP source (aioimaplib), as a package of its four ideas:

- :mod:`~fetcher.sources.imap.errors`: library exceptions and NO/BAD answers -> pipeline errors;
- :mod:`~fetcher.sources.imap.parsing`: pure response parsing and cursor planning;
- :mod:`~fetcher.sources.imap.client`: the aioimaplib shims (EXISTS, a linear reader, lean TLS);
- :mod:`~fetcher.sources.imap.source`: :class:`ImapSource`, a :class:`~fetcher.sources.MailSource`.

The names below are the package's public face (``from fetcher.sources.imap import ImapSource``).
"""

from fetcher.sources.imap.errors import ImapRefused, map_imap_error
from fetcher.sources.imap.parsing import (
    FetchedItems,
    FolderPlan,
    FolderState,
    ListedFolder,
    advance_cursor,
    decode_mailbox,
    encode_mailbox,
    needs_recheck,
    parse_fetch,
    parse_fetched_body,
    parse_list,
    parse_search,
    parse_select,
    plan_folder,
    uid_set,
)
from fetcher.sources.imap.source import ImapOptions, ImapSource, ImapSourceFactory, wanted_folders

__all__ = [
    "FetchedItems",
    "FolderPlan",
    "FolderState",
    "ImapOptions",
    "ImapRefused",
    "ImapSource",
    "ImapSourceFactory",
    "ListedFolder",
    "advance_cursor",
    "decode_mailbox",
    "encode_mailbox",
    "map_imap_error",
    "needs_recheck",
    "parse_fetch",
    "parse_fetched_body",
    "parse_list",
    "parse_search",
    "parse_select",
    "plan_folder",
    "uid_set",
    "wanted_folders",
]
