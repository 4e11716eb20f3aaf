"""``email-channels`` / ``python -m email_channels_cli``."""

from __future__ import annotations

from email_channels_cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
