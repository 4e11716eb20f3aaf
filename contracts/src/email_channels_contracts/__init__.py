"""Email Channels contracts for campaign services.

Install this package (``email-channels-contracts``) to build a campaign service: it holds the
typed topic contracts, the topic names with the deployment prefix, the record and mail header
names, and helpers to read routed mail (:mod:`.reading`) and to write replies (:mod:`.replying`).
Its version moves with the topic schemas (:mod:`._version`). Everything here is the same code the
services run (re-exported from the shared ``email_channels`` package), not a copy.

Topics a campaign service uses::

    email.routed    (read,  key: conversation id, header campaign-id)   RoutedEmail
    email.outbound  (write, key: conversation id)                       OutboundEmail
    email.delivery  (read,  key: outbound id)                           DeliveryEvent

Read with ``isolation_level="read_committed"``: the router writes in transactions.
"""

from email_channels.codec import decode, encode
from email_channels.events import (
    Address,
    Attachment,
    Campaign,
    ChannelStatus,
    DeliveryEvent,
    DeliveryStatus,
    EmailFlags,
    OutboundAttachment,
    OutboundEmail,
    RoutedEmail,
    RoutingReason,
)
from email_channels.headers import CAMPAIGN_HEADER, LOOP_HEADER
from email_channels.topics import Topic, TopicNames
from email_channels_contracts._version import SCHEMA_FINGERPRINT, __version__
from email_channels_contracts.reading import (
    attachment_content,
    campaign_of,
    needs_no_answer,
    raw_mime,
    read_routed,
)
from email_channels_contracts.replying import outbound_id_for, reply_subject, reply_to

__all__ = [
    "CAMPAIGN_HEADER",
    "LOOP_HEADER",
    "SCHEMA_FINGERPRINT",
    "Address",
    "Attachment",
    "Campaign",
    "ChannelStatus",
    "DeliveryEvent",
    "DeliveryStatus",
    "EmailFlags",
    "OutboundAttachment",
    "OutboundEmail",
    "RoutedEmail",
    "RoutingReason",
    "Topic",
    "TopicNames",
    "__version__",
    "attachment_content",
    "campaign_of",
    "decode",
    "encode",
    "needs_no_answer",
    "outbound_id_for",
    "raw_mime",
    "read_routed",
    "reply_subject",
    "reply_to",
]
