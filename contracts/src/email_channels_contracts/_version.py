"""The contracts package's version moves with the topic schemas.

``SCHEMA_FINGERPRINT`` is the sha256 of every topic's JSON Schema as the models produce it. A test
fails when the models change and this file does not: bump ``__version__`` (minor for an added
optional field, major for a new ``schema_version``) and paste the fingerprint the test prints
(also printed by ``python -m email_channels_contracts.fingerprint``).
"""

__version__ = "1.0.0"
SCHEMA_FINGERPRINT = "ed49dcc15473e5c8b2497970003acb24d24c597297d653649cd9a9dad5302e35"
