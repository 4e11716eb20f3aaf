"""``python -m campaign_autoreply``: run the reference campaign service until SIGTERM."""

from __future__ import annotations

import asyncio

from campaign_autoreply.app import Autoreply
from campaign_autoreply.settings import Settings
from email_channels.service import run_until_signalled, start_observability


def main() -> None:
    settings = Settings()
    start_observability("campaign-autoreply", settings.common)
    asyncio.run(run_until_signalled(Autoreply(settings).run))


if __name__ == "__main__":
    main()
