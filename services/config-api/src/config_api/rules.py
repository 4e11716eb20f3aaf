"""Rules a channel must satisfy before it is saved — pure: a channel in, problems out.

Shape checks (types, lengths, trimming) live in :mod:`config_api.schemas`; these are the rules
that look at several fields, or at other config (does the campaign exist?). Each problem names
the request field to fix, in FastAPI's ``loc`` form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config_api.errors import Problem
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    Filter,
    ImapInbound,
    SmtpOutbound,
)
from email_channels.filter_regex import FilterRegexError, compile_filter_regex

if TYPE_CHECKING:
    from collections.abc import Callable

NEEDS_DEFAULT_CAMPAIGN = (
    "a channel can only be enabled when it has a default campaign: set default_campaign_id "
    "(or leave the channel disabled)"
)


def channel_problems(
    channel: ChannelConfig, *, campaign_exists: Callable[[str], bool]
) -> list[Problem]:
    """Every rule ``channel`` breaks; an empty list means it may be saved."""
    problems: list[Problem] = []
    if channel.enabled and channel.default_campaign_id is None:
        problems.append(Problem(("body", "enabled"), NEEDS_DEFAULT_CAMPAIGN))
    if channel.sync_recipient_only and channel.email_address is None:
        problems.append(
            Problem(
                ("body", "email_address"),
                "required when sync_recipient_only is set: only mail addressed to it is taken",
            )
        )
    if channel.default_campaign_id is not None and not campaign_exists(channel.default_campaign_id):
        problems.append(
            Problem(
                ("body", "default_campaign_id"),
                f"campaign {channel.default_campaign_id!r} does not exist; create it first "
                "(POST /api/v1/campaigns) or pick one from GET /api/v1/campaigns",
            )
        )
    if isinstance(channel.inbound, ImapInbound):
        problems.extend(_imap_problems(channel.inbound))
    if isinstance(channel.outbound, SmtpOutbound):
        problems.extend(_smtp_problems(channel.outbound))
    return problems


def _imap_problems(inbound: ImapInbound) -> list[Problem]:
    problems: list[Problem] = []
    if not inbound.folders and not inbound.sync_all_folders:
        problems.append(
            Problem(
                ("body", "inbound", "folders"),
                "name at least one folder (e.g. INBOX), or set sync_all_folders",
            )
        )
    if inbound.after_fetch is AfterFetch.MOVE and not inbound.move_to_folder:
        problems.append(
            Problem(
                ("body", "inbound", "move_to_folder"),
                "required when after_fetch is 'move': the folder to move fetched mail to",
            )
        )
    if inbound.after_fetch is not AfterFetch.MOVE and inbound.move_to_folder:
        problems.append(
            Problem(
                ("body", "inbound", "move_to_folder"),
                "only used when after_fetch is 'move'; remove it or set after_fetch to 'move'",
            )
        )
    return problems


def _smtp_problems(outbound: SmtpOutbound) -> list[Problem]:
    if outbound.password is not None and outbound.username is None:
        return [
            Problem(
                ("body", "outbound", "username"),
                "required when a password is set (SMTP authentication needs both)",
            )
        ]
    if outbound.username is not None and outbound.password is None:
        return [
            Problem(
                ("body", "outbound", "password"),
                "required when a username is set (SMTP authentication needs both)",
            )
        ]
    return []


# --- filters ------------------------------------------------------------------------------------

EMPTY_FILTER = (
    "a filter needs at least one criterion (sender, subject or body keywords, all_of, regex or "
    "a header condition); without one it would never match"
)


def filter_problems(
    rule: Filter, *, loc: tuple[str | int, ...], campaign_exists: Callable[[str], bool]
) -> list[Problem]:
    """Every rule one filter breaks; ``loc`` is where the filter sits in the request body."""
    problems: list[Problem] = []
    if not campaign_exists(rule.campaign_id):
        problems.append(
            Problem(
                (*loc, "campaign_id"),
                f"campaign {rule.campaign_id!r} does not exist; create it first "
                "(POST /api/v1/campaigns) or pick one from GET /api/v1/campaigns",
            )
        )
    criteria = (
        rule.sender_keywords,
        rule.subject_keywords,
        rule.body_keywords,
        rule.all_of,
        rule.regex,
        rule.header_conditions,
    )
    if not any(criteria):
        problems.append(Problem(loc, EMPTY_FILTER))
    if rule.regex is not None:
        try:
            compile_filter_regex(rule.regex)
        except FilterRegexError as exc:
            problems.append(Problem((*loc, "regex"), str(exc)))
    return problems


def filter_list_problems(
    rules: list[Filter], *, focus: str | None = None, campaign_exists: Callable[[str], bool]
) -> list[Problem]:
    """Problems of a whole list, at ``filters.<index>``; the filter ``focus`` at the body."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        loc: tuple[str | int, ...] = ("body",) if rule.id == focus else ("body", "filters", index)
        if rule.id in seen:
            problems.append(Problem((*loc, "id"), f"filter id {rule.id!r} appears twice"))
        seen.add(rule.id)
        problems.extend(filter_problems(rule, loc=loc, campaign_exists=campaign_exists))
    return problems


# --- server changes -----------------------------------------------------------------------------

LOGIN_FIELDS = ("host", "port", "username", "tls")
"""Changing any of these needs the password again (see ``mapping._refuse_moved_password``)."""
