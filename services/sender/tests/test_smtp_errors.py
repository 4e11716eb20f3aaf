"""map_smtp_error(): every aiosmtplib failure lands on the right branch of the taxonomy."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from email_channels.errors import ChannelMisconfigured, PermanentError, TransientError
from sender.errors import MessageRejected, SendDeferred
from sender.transports.smtp import map_smtp_error

WHERE = "smtp.shop.example:587"


def wrapped(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "step"),
    [
        (aiosmtplib.SMTPResponseException(451, "4.3.0 Try again later"), "send"),
        (aiosmtplib.SMTPRecipientRefused(450, "4.2.0 Mailbox busy", "a@x"), "send"),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Temporary auth failure"), "auth"),
        (aiosmtplib.SMTPConnectResponseError(421, "4.3.2 Too busy"), "tcp"),
    ],
)
def test_4xx_is_deferred_with_the_reply(exc, step):
    error = map_smtp_error(exc, step=step, where=WHERE)

    assert isinstance(error, SendDeferred)
    assert error.retriable
    assert error.reply is not None
    assert error.reply.code == exc.code


@pytest.mark.parametrize(
    "exc",
    [
        aiosmtplib.SMTPConnectError("Error connecting to x on port 587: [Errno 111] refused"),
        aiosmtplib.SMTPServerDisconnected("Connection lost"),
        aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"),
        aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"),
        TimeoutError(),
        ConnectionResetError(104, "reset"),
    ],
)
def test_connection_faults_and_timeouts_are_transient(exc):
    error = map_smtp_error(exc, step="send", where=WHERE)
    assert type(error) is TransientError


@pytest.mark.parametrize(
    "exc",
    [
        aiosmtplib.SMTPDataError(554, "5.6.0 Message content rejected"),
        aiosmtplib.SMTPSenderRefused(553, "5.7.1 Sender not allowed", "a@x"),
        aiosmtplib.SMTPResponseException(552, "5.3.4 Message too big"),
    ],
)
def test_5xx_to_the_message_is_rejected_with_code_and_text(exc):
    error = map_smtp_error(exc, step="send", where=WHERE)

    assert isinstance(error, MessageRejected)
    assert not error.retriable
    assert error.reply is not None
    assert error.reply.code == exc.code
    assert error.reply.text == exc.message


def test_every_recipient_refused_permanently_is_rejected():
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "a@gone.example"),
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "b@gone.example"),
        ]
    )
    error = map_smtp_error(exc, step="send", where=WHERE)

    assert isinstance(error, MessageRejected)
    assert error.reply is not None
    assert error.reply.code == 550
    assert "a@gone.example" in str(error)
    assert "b@gone.example" in str(error)


def test_recipients_refused_with_any_4xx_is_deferred():
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "a@x"),
            aiosmtplib.SMTPRecipientRefused(452, "4.2.2 Over quota", "b@x"),
        ]
    )
    error = map_smtp_error(exc, step="send", where=WHERE)
    assert isinstance(error, SendDeferred)
    assert error.reply is not None
    assert error.reply.code == 452


@pytest.mark.parametrize(
    ("exc", "step"),
    [
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"),
            "auth",
        ),
        (aiosmtplib.SMTPResponseException(530, "5.7.0 Authentication required"), "send"),
        (aiosmtplib.SMTPException("SMTP AUTH extension not supported by server."), "auth"),
    ],
)
def test_authentication_problems_make_the_channel_misconfigured(exc, step):
    error = map_smtp_error(exc, step=step, where=WHERE)

    assert isinstance(error, ChannelMisconfigured)
    assert error.step == "auth"


def test_untrusted_certificate_is_a_tls_misconfiguration():
    cert_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert_error.verify_message = "unable to get local issuer certificate"
    exc = wrapped(aiosmtplib.SMTPConnectError("Error connecting"), cert_error)

    error = map_smtp_error(exc, step="tcp", where=WHERE)

    assert isinstance(error, ChannelMisconfigured)
    assert error.step == "tls"
    assert "unable to get local issuer certificate" in str(error)


def test_starttls_not_offered_is_a_tls_misconfiguration():
    exc = aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server.")
    error = map_smtp_error(exc, step="tls", where=WHERE)

    assert isinstance(error, ChannelMisconfigured)
    assert error.step == "tls"


def test_5xx_greeting_is_a_session_misconfiguration():
    exc = aiosmtplib.SMTPConnectResponseError(554, "5.7.1 Your IP is blocked")
    error = map_smtp_error(exc, step="tcp", where=WHERE)

    assert isinstance(error, ChannelMisconfigured)
    assert error.step == "tcp"


def test_smtputf8_missing_rejects_the_message():
    exc = aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
    assert isinstance(map_smtp_error(exc, step="send", where=WHERE), MessageRejected)


def test_anything_unexpected_is_permanent_not_retried_forever():
    error = map_smtp_error(RuntimeError("boom"), step="send", where=WHERE)
    assert type(error) is PermanentError
