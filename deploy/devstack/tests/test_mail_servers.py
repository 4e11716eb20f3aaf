"""The local mail servers speak real IMAP, POP3 and SMTP, over verified TLS.

Only standard-library clients are used, each with an SSL context that trusts just the generated
test CA, so a passing test also proves the certificates are right for `localhost` and 127.0.0.1.
Each server starts once per module; each test uses its own mailbox or recipient domain.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from devstack.certs import TestPki, make_test_pki
from devstack.dovecot import Dovecot, DovecotError
from devstack.smtp import SmtpServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

SMTP_USER = "submit@example.com"
SMTP_PASSWORD = "s3cret: with spaces"


@dataclass(frozen=True)
class Mailbox:
    user: str
    password: str


def make_message(subject: str) -> bytes:
    return (
        "From: Customer <customer@example.org>\r\n"
        "To: Support <support@example.com>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4()}@example.org>\r\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Grüße, my order has not arrived.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(pki: TestPki) -> ssl.SSLContext:
    """A client context that verifies certificates and host names against the test CA only."""
    return ssl.create_default_context(cafile=pki.ca_cert)


@pytest.fixture(scope="module")
def dovecot(pki: TestPki) -> Iterator[Dovecot]:
    with Dovecot(pki=pki) as server:
        yield server


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Mailbox:
    box = Mailbox(user=f"agent-{uuid.uuid4().hex[:8]}@example.com", password="pa:ss w0rd")
    dovecot.add_user(box.user, box.password)
    return box


@pytest.fixture(scope="module")
def smtp(pki: TestPki) -> Iterator[SmtpServer]:
    with SmtpServer(pki, credentials=(SMTP_USER, SMTP_PASSWORD)) as server:
        yield server


# -- IMAP -------------------------------------------------------------------------------------


def test_imaps_login_lists_delivered_message_by_uid(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    """A delivered message is in INBOX under a UID, byte for byte (IMAP sends CRLF)."""
    raw = make_message("where is my order")
    dovecot.deliver(mailbox.user, raw)

    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap:
        imap.login(mailbox.user, mailbox.password)
        imap.select("INBOX", readonly=True)
        status, data = imap.uid("SEARCH", "ALL")
        assert status == "OK"
        uids = data[0].split()
        assert len(uids) == 1
        status, fetched = imap.uid("FETCH", uids[0], "(UID BODY.PEEK[])")
        assert status == "OK"
        assert fetched[0][1] == raw
        status, validity = imap.response("UIDVALIDITY")
        assert validity[0] is not None
        assert int(validity[0])


def test_starttls_on_plain_imap_port(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    """The plain port offers STARTTLS; after it, the session is encrypted and login works."""
    with imaplib.IMAP4("localhost", dovecot.imap_port) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=tls)
        assert isinstance(imap.sock, ssl.SSLSocket)
        status, _ = imap.login(mailbox.user, mailbox.password)
        assert status == "OK"


def test_plain_imap_login_is_allowed(dovecot: Dovecot, mailbox: Mailbox) -> None:
    """Plaintext login without TLS works, as an operator may configure plain IMAP."""
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port) as imap:
        status, _ = imap.login(mailbox.user, mailbox.password)
        assert status == "OK"


def test_idle_client_is_told_about_new_mail(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    """A client in IDLE gets an untagged EXISTS soon after a delivery."""
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap:
        imap.login(mailbox.user, mailbox.password)
        assert "IDLE" in imap.capabilities
        imap.select("INBOX")
        tag = imap._new_tag().decode()
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+ ")

        started = time.monotonic()
        dovecot.deliver(mailbox.user, make_message("push me"))
        imap.sock.settimeout(10)
        assert imap.readline() == b"* 1 EXISTS\r\n"
        assert time.monotonic() - started < 5

        imap.send(b"DONE\r\n")
        while not (line := imap.readline()).startswith(tag.encode()):
            assert line.startswith(b"* ")
        assert b" OK " in line


def test_folders_can_be_created_and_delivered_to(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    """create_folder() makes a subscribed folder; deliver() can target it (creating others)."""
    dovecot.create_folder(mailbox.user, "Orders/2025")
    dovecot.create_folder(mailbox.user, "Orders/2025")  # again: no error
    dovecot.deliver(mailbox.user, make_message("filed"), folder="Orders/2025")
    dovecot.deliver(mailbox.user, make_message("spam"), folder="Junk")
    dovecot.deliver(mailbox.user, make_message("new folder"), folder="Rückfragen")

    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap:
        imap.login(mailbox.user, mailbox.password)
        _, response = imap.list()
        listed = [line for line in response if isinstance(line, bytes)]
        names = {line.decode().rsplit(' "/" ', 1)[1].strip('"') for line in listed}
        assert {"INBOX", "Orders/2025", "Junk", "R&APw-ckfragen"} <= names
        assert any(b"\\Junk" in line for line in listed)
        for folder in ("Orders/2025", "Junk", "R&APw-ckfragen"):
            status, count = imap.select(f'"{folder}"', readonly=True)
            assert (status, count) == ("OK", [b"1"])
        status, count = imap.select("INBOX", readonly=True)
        assert count == [b"0"]


def test_wrong_password_is_refused_over_imap(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    with (
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap,
        pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
    ):
        imap.login(mailbox.user, "wrong")


def test_password_change_applies_while_running(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    """add_user() on an existing user replaces the password at once (same length, same second)."""
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap:
        assert imap.login(mailbox.user, mailbox.password)[0] == "OK"
    dovecot.add_user(mailbox.user, "pa:ss W0rd")
    with (
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login(mailbox.user, mailbox.password)
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=tls) as imap:
        assert imap.login(mailbox.user, "pa:ss W0rd")[0] == "OK"


def test_certificate_from_another_ca_is_rejected(dovecot: Dovecot) -> None:
    """Clients that do not trust the test CA fail the handshake: verification is real."""
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            dovecot.host, dovecot.imaps_port, ssl_context=ssl.create_default_context()
        )


def test_deliver_to_unknown_user_fails(dovecot: Dovecot) -> None:
    with pytest.raises(DovecotError, match="add_user"):
        dovecot.deliver("nobody-here@example.com", make_message("lost"))


def test_failed_start_reports_the_dovecot_log(pki: TestPki, tmp_path: Path) -> None:
    """A Dovecot that cannot start says why, quoting its own log."""
    broken = TestPki(pki.ca_cert, pki.server_cert, tmp_path / "missing.key")
    server = Dovecot(pki=broken)
    with pytest.raises(DovecotError, match=r"(?s)dovecot exited.*missing\.key"):
        server.start()
    assert not server.running
    assert not server.workdir.exists()


# -- POP3 -------------------------------------------------------------------------------------


def test_pop3s_sees_the_message_with_uidl(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    raw = make_message("pop me")
    dovecot.deliver(mailbox.user, raw)

    pop = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=tls)
    try:
        pop.user(mailbox.user)
        pop.pass_(mailbox.password)
        response, listing, _ = pop.uidl()
        assert response.startswith(b"+OK")
        assert len(listing) == 1
        number, uidl = listing[0].split()
        assert number == b"1"
        assert uidl
        _, lines, _ = pop.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == raw
    finally:
        pop.quit()


def test_pop3_stls_and_wrong_password(
    dovecot: Dovecot, mailbox: Mailbox, tls: ssl.SSLContext
) -> None:
    pop = poplib.POP3("localhost", dovecot.pop3_port)
    try:
        pop.stls(context=tls)
        pop.user(mailbox.user)
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            pop.pass_("wrong")
    finally:
        pop.close()


# -- SMTP -------------------------------------------------------------------------------------


def test_smtp_starttls_auth_delivers_and_is_captured(smtp: SmtpServer, tls: ssl.SSLContext) -> None:
    raw = make_message("reply from an agent")
    rcpt = f"{uuid.uuid4().hex[:8]}@customer.example"
    with smtplib.SMTP("localhost", smtp.port, timeout=10) as client:
        client.starttls(context=tls)
        client.login(SMTP_USER, SMTP_PASSWORD)
        refused = client.sendmail("support@example.com", [rcpt], raw)
    assert refused == {}

    mail = smtp.wait_for(lambda m: rcpt in m.rcpt_tos, timeout=5)
    assert mail.mail_from == "support@example.com"
    assert mail.rcpt_tos == (rcpt,)
    assert mail.raw == raw
    assert mail.tls
    assert mail.authenticated_as == SMTP_USER
    assert mail.message()["Subject"] == "reply from an agent"


def test_smtp_refuses_bad_password(smtp: SmtpServer, tls: ssl.SSLContext) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.starttls(context=tls)
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(SMTP_USER, "wrong")
    assert refused.value.smtp_code == 535


def test_smtp_offers_auth_only_after_starttls(smtp: SmtpServer) -> None:
    """Before TLS there is no AUTH and no mail; the server insists on STARTTLS."""
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, _ = client.mail("support@example.com")
        assert code == 530


def test_smtp_answers_configured_replies_per_recipient(
    smtp: SmtpServer, tls: ssl.SSLContext
) -> None:
    """Recipients matching a rule get its reply; the others are still accepted."""
    domain = f"{uuid.uuid4().hex[:8]}.example"
    smtp.reply_to_recipients(rf"busy@{domain}", "451 4.3.0 Mailbox busy, try later")
    smtp.reply_to_recipients(rf".*@gone\.{domain}", "550 5.1.1 No such user")
    accepted = f"ok@{domain}"
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.starttls(context=tls)
        client.login(SMTP_USER, SMTP_PASSWORD)
        refused = client.sendmail(
            "support@example.com",
            [f"busy@{domain}", f"x@gone.{domain}", accepted],
            make_message("partly refused"),
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused) as all_refused:
            client.sendmail("support@example.com", [f"BUSY@{domain}"], make_message("no"))

    assert refused == {
        f"busy@{domain}": (451, b"4.3.0 Mailbox busy, try later"),
        f"x@gone.{domain}": (550, b"5.1.1 No such user"),
    }
    assert all_refused.value.recipients[f"BUSY@{domain}"][0] == 451
    assert smtp.wait_for(lambda m: accepted in m.rcpt_tos).rcpt_tos == (accepted,)


def test_open_smtp_server_needs_no_auth(pki: TestPki, tls: ssl.SSLContext) -> None:
    with SmtpServer(pki, credentials=None) as open_server:
        with smtplib.SMTP(open_server.host, open_server.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            client.sendmail("a@example.com", ["b@example.com"], make_message("plain"))
        mail = open_server.wait_for(timeout=5)
    assert not mail.tls
    assert mail.authenticated_as is None


def test_implicit_tls_smtp_server(pki: TestPki, tls: ssl.SSLContext) -> None:
    with SmtpServer(pki, credentials=("u", "p"), implicit_tls=True) as server:
        with smtplib.SMTP_SSL("localhost", server.port, context=tls, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("auth")
            code, _ = client.mail("a@example.com")
            assert code == 530
            client.rset()
            client.login("u", "p")
            client.sendmail("a@example.com", ["b@example.com"], make_message("implicit"))
        mail = server.wait_for(timeout=5)
    assert mail.tls
    assert mail.authenticated_as == "u"


def test_wait_for_times_out_with_what_was_received(smtp: SmtpServer) -> None:
    with pytest.raises(TimeoutError, match="no matching mail"):
        smtp.wait_for(lambda _: False, timeout=0.1)
