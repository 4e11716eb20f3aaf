"""Transports: how a composed message leaves the sender (SMTP; Exchange Online next)."""

from sender.transports.base import Envelope, SendResult, Transport, TransportName
from sender.transports.factory import ChannelTransports, TransportFactory
from sender.transports.memory import MemoryTransport
from sender.transports.smtp import SmtpTransport, map_smtp_error

__all__ = [
    "ChannelTransports",
    "Envelope",
    "MemoryTransport",
    "SendResult",
    "SmtpTransport",
    "Transport",
    "TransportFactory",
    "TransportName",
    "map_smtp_error",
]
