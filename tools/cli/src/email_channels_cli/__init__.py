"""``email-channels``: the operator CLI of Email Channels.

Each command is a thin typer wrapper (:mod:`email_channels_cli.app`) around an async function
in the module named after what it works on: :mod:`~email_channels_cli.tail`,
:mod:`~email_channels_cli.deadletters`, :mod:`~email_channels_cli.rotation`,
:mod:`~email_channels_cli.validation`. Kafka settings come from the same ``KAFKA_*`` variables
the services read.
"""
