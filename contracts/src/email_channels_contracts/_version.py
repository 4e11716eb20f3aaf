"""The contracts package's version moves with the topic schemas.

``SCHEMA_FINGERPRINT`` is the sha256 of every topic's JSON Schema as the models produce it. A test
fails when the models change and this file does not: bump ``__version__`` (minor for an added
optional field, major for a new ``schema_version``) and paste the fingerprint the test prints
(also printed by ``python -m email_channels_contracts.fingerprint``).
"""

__version__ = "1.3.0"
SCHEMA_FINGERPRINT = "3e0cd3af2aa2348103be5ce79e2c3ff6f0862f773a0fc9273922081418ae57f8"
