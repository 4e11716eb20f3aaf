"""The typer commands: parse options, run the async work, show the result with rich.

Exit codes: 0 done, 1 the work found a problem (a check failed, a validation failed, a secret
could not be rotated), 2 the command could not do its work (Kafka or config-api unreachable,
bad input). Kafka settings come from ``KAFKA_*``, the keyring and blob store from
``EMAIL_CHANNELS_*``, as in the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from importlib import metadata
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from email_channels.admin import check_topics, ensure_topics
from email_channels.blobstore import blob_store_from_url
from email_channels.errors import PipelineError
from email_channels.settings import CommonSettings, KafkaSettings
from email_channels_cli import deadletters, rotation, validation
from email_channels_cli.tail import full_name, records, shown

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from email_channels.validation import Direction, DirectionReport
    from email_channels_cli.deadletters import Letter

app = typer.Typer(
    name="email-channels",
    help="Operate an Email Channels deployment: topics, channels, records, dead letters, keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="The contract's Kafka topics.", no_args_is_help=True)
channel_app = typer.Typer(help="Channels, through config-api.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters on email.dlq.", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets stored in email.channels.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(channel_app, name="channel")
app.add_typer(dlq_app, name="dlq")
app.add_typer(secrets_app, name="secrets")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _terminal_width() -> None:
    """Honour COLUMNS as it is when a command runs (the consoles above are built at import)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        out.width = err.width = int(columns)


EXIT_PROBLEM = 1
EXIT_CANNOT = 2
PACKAGES = (
    "email-channels",
    "email-channels-fetcher",
    "email-channels-router",
    "email-channels-sender",
    "email-channels-config-api",
    "email-channels-cli",
)


T = TypeVar("T")


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a pipeline error ends the command with its message and exit code 2."""
    try:
        return asyncio.run(work)
    except (PipelineError, LookupError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CANNOT) from None


# --- version -----------------------------------------------------------------------------


@app.command()
def version() -> None:
    """Versions of the installed Email Channels packages."""
    for package in PACKAGES:
        try:
            out.print(f"{package} {metadata.version(package)}", highlight=False)
        except metadata.PackageNotFoundError:
            out.print(f"{package} [dim]not installed[/dim]")


# --- topics ------------------------------------------------------------------------------


@topics_app.command("ensure")
def topics_ensure() -> None:
    """Create the missing topics and check the existing ones (idempotent)."""
    settings = KafkaSettings()
    run(ensure_topics(settings, client_id="email-channels-cli"))
    out.print(f"{len(settings.topics.all())} topics present and consistent", highlight=False)


@topics_app.command("check")
def topics_check() -> None:
    """Report missing or wrong topics without changing anything (exit 1 when any)."""
    settings = KafkaSettings()
    problems = run(check_topics(settings, client_id="email-channels-cli"))
    for problem in problems:
        out.print(f"[red]✗[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(EXIT_PROBLEM)
    out.print(f"[green]✓[/green] {len(settings.topics.all())} topics as the contract says")


# --- channel validate --------------------------------------------------------------------


@channel_app.command("validate")
def channel_validate(
    channel_id: Annotated[str, typer.Argument(help="the channel's id")],
    direction: Annotated[
        str,
        typer.Option(
            help="which result to show and judge: inbound, outbound or both (config-api always "
            "validates, and records, every direction the channel configures)",
            case_sensitive=False,
        ),
    ] = "both",
    url: Annotated[
        str, typer.Option(envvar="CONFIG_API_URL", help="config-api's base URL")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(envvar="CONFIG_API_TOKEN", help="API token (admin)", show_default=False),
    ] = None,
) -> None:
    """Contact the channel's mail servers through config-api and show each step."""
    wanted: list[Direction] = ["inbound", "outbound"]
    if direction != "both":
        if direction not in wanted:
            err.print("[red]error:[/red] --direction must be inbound, outbound or both")
            raise typer.Exit(EXIT_CANNOT)
        wanted = [direction]
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True
    ) as progress:
        progress.add_task(f"validating the settings of {channel_id} (up to 60 s)")
        report = run(validation.validate_channel(url, token, channel_id))
    shown = validation.directions_of(report, wanted)
    if not shown:
        err.print(f"[red]error:[/red] channel {channel_id} has no {' or '.join(wanted)} settings")
        raise typer.Exit(EXIT_PROBLEM)
    for each in shown:
        _show_outcome(each)
    if report.recorded:
        out.print("[dim]outcome recorded on email.channel-status[/dim]")
    if not all(each.ok for each in shown):
        raise typer.Exit(EXIT_PROBLEM)


def _show_outcome(outcome: DirectionReport) -> None:
    mark = "[green]✓ valid[/green]" if outcome.ok else "[red]✗ failed[/red]"
    head = f"{outcome.direction} ({outcome.kind}): {mark}"
    out.print(head + (f" — {outcome.message}" if outcome.message else ""), highlight=False)
    table = Table(show_header=True, box=None, pad_edge=False)
    for column in ("", "step", "took", "detail"):
        table.add_column(column)
    for step in outcome.steps:
        sign = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
        table.add_row(sign, step.name, f"{step.elapsed_ms / 1000:.2f} s", step.message)
    if outcome.steps:
        out.print(table)


# --- tail --------------------------------------------------------------------------------


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="e.g. email.routed (the prefix is added)")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep waiting")] = False,
    last: Annotated[
        int | None, typer.Option("--last", "-n", help="only the last N records per partition")
    ] = None,
) -> None:
    """Print a topic's records: position, key, headers and the JSON value."""
    settings = KafkaSettings()
    name = full_name(settings, topic)

    async def show() -> None:
        async for record in records(settings, name, follow=follow, last=last):
            item = shown(record)
            head = f"--- {item.topic}[{item.partition}]@{item.offset} key={item.key}"
            if item.headers:
                head += " " + " ".join(f"{k}={v}" for k, v in sorted(item.headers.items()))
            out.print(head, style="bold", highlight=False, markup=False)
            out.print_json(json.dumps(item.value, ensure_ascii=False))

    with contextlib.suppress(KeyboardInterrupt):
        run(show())


# --- dlq ---------------------------------------------------------------------------------

ChannelOption = Annotated[
    str | None, typer.Option("--channel", "-c", help="only this channel's dead letters")
]
StageOption = Annotated[
    str | None, typer.Option("--stage", help="only from this stage (router, sender, ...)")
]


@dlq_app.command("list")
def dlq_list(channel: ChannelOption = None, stage: StageOption = None) -> None:
    """The dead letters now on email.dlq (oldest first per partition)."""
    settings = KafkaSettings()
    letters, unreadable = run(deadletters.read_letters(settings, channel=channel, stage=stage))
    table = Table(title=f"{settings.topics.dlq}: {len(letters)} dead letters")
    for column in ("ref", "at", "stage", "source", "channel", "error", "retriable"):
        table.add_column(column)
    for item in letters:
        letter = item.letter
        table.add_row(
            item.ref,
            letter.at.isoformat(timespec="seconds"),
            letter.stage,
            letter.source_topic,
            deadletters.channel_of(letter, settings) or "",
            f"{letter.error_kind}: {letter.error_message[:80]}",
            "yes" if letter.retriable else "no",
        )
    out.print(table)
    if unreadable:
        err.print(f"[yellow]{unreadable} records on the topic are not dead letters[/yellow]")


@dlq_app.command("show")
def dlq_show(ref: Annotated[str, typer.Argument(help="partition/offset, from dlq list")]) -> None:
    """One dead letter in full; the original value decoded when it is JSON."""
    settings = KafkaSettings()
    item = run(deadletters.find_letter(settings, ref))
    shown_letter = item.letter.model_dump(mode="json")
    if item.letter.original_value is not None:
        try:
            shown_letter["original_value"] = json.loads(item.letter.original_value)
        except ValueError:
            shown_letter["original_value"] = f"<{len(item.letter.original_value)} bytes>"
    if item.letter.original_key is not None:
        shown_letter["original_key"] = item.letter.original_key.decode("utf-8", "replace")
    out.print_json(json.dumps(shown_letter, ensure_ascii=False))


@dlq_app.command("replay")
def dlq_replay(
    ref: Annotated[
        list[str] | None, typer.Option("--ref", help="partition/offset; repeatable")
    ] = None,
    channel: ChannelOption = None,
    stage: StageOption = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="every dead letter (no filter)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Re-publish dead letters' original records to the topics they came from."""
    if not (ref or channel or stage or replay_all):
        err.print("[red]error:[/red] say which: --ref, --channel, --stage or --all")
        raise typer.Exit(EXIT_CANNOT)
    settings = KafkaSettings()
    letters, _ = run(deadletters.read_letters(settings, channel=channel, stage=stage))
    if ref:
        wanted = set(ref)
        letters = [item for item in letters if item.ref in wanted]
        if missing := wanted - {item.ref for item in letters}:
            err.print(f"[red]error:[/red] no such dead letter: {', '.join(sorted(missing))}")
            raise typer.Exit(EXIT_CANNOT)
    if not letters:
        out.print("nothing to replay")
        return
    if not yes:
        typer.confirm(
            f"Replay {len(letters)} dead letters to the topics they came from?", abort=True
        )
    blobs = blob_store_from_url(CommonSettings().blob_store_url)
    with _bar("replaying", len(letters)) as (progress, task):

        def advance(_item: Letter) -> None:
            progress.advance(task)

        async def work() -> int:
            try:
                return await deadletters.replay(settings, letters, blobs=blobs, on_replayed=advance)
            finally:
                await blobs.aclose()

        count = run(work())
    out.print(f"replayed {count} dead letters")


# --- secrets rotate ----------------------------------------------------------------------


@secrets_app.command("rotate")
def secrets_rotate(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only count what would be re-encrypted")
    ] = False,
) -> None:
    """Re-encrypt every stored secret with the first (newest) key of the keyring."""
    settings = KafkaSettings()
    try:
        box = CommonSettings().secret_box(needed_for="re-encrypt the stored secrets")
    except PipelineError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CANNOT) from None
    with _bar("channels", None) as (progress, task):
        report = run(
            rotation.rotate_secrets(
                settings, box, dry_run=dry_run, on_channel=lambda _id: progress.advance(task)
            )
        )
    verb = "would re-encrypt" if dry_run else "re-encrypted"
    out.print(
        f"{report.channels} channels read; {verb} {report.rotated_secrets} secrets in "
        f"{len(report.rotated_channels)} channels with key {box.active_kid!r}",
        highlight=False,
    )
    for channel_id, reason in sorted(report.failed.items()):
        err.print(f"[red]✗[/red] {channel_id}: {reason}", highlight=False)
    if report.failed:
        raise typer.Exit(EXIT_PROBLEM)


class _bar:  # noqa: N801 - used like a function: ``with _bar(...) as (progress, task)``
    """A rich progress bar on stderr (stdout stays the command's result)."""

    def __init__(self, what: str, total: int | None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        )
        self._what = what
        self._total = total

    def __enter__(self) -> tuple[Progress, Any]:
        self._progress.__enter__()
        return self._progress, self._progress.add_task(self._what, total=self._total)

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)
