"""The contracts package's version moves with the topic schemas.

``SCHEMA_FINGERPRINT`` is the sha256 of every topic's JSON Schema as the models produce it. A test
fails when the models change and this file does not: bump ``__version__`` (minor for an added
optional field, major for a new ``schema_version``) and paste the fingerprint the test prints
(also printed by ``python -m email_channels_contracts.fingerprint``).
"""

__version__ = "1.1.0"
SCHEMA_FINGERPRINT = "1e87933633cc8189f827985456ffd1793f40c324355c656987ce8b60b8f7534f"
