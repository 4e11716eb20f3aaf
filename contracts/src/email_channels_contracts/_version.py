"""The contracts package's version moves with the topic schemas.

``SCHEMA_FINGERPRINT`` is the sha256 of every topic's JSON Schema as the models produce it. A test
fails when the models change and this file does not: bump ``__version__`` (minor for an added
optional field, major for a new ``schema_version``) and paste the fingerprint the test prints
(also printed by ``python -m email_channels_contracts.fingerprint``).
"""

__version__ = "1.2.0"
SCHEMA_FINGERPRINT = "c13f5ab22c94468d50ed8d62d97cc4d3b954342e67667ce78631e59f08983a81"
