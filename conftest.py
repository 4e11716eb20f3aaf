"""Root conftest: real-infrastructure fixtures live in the devstack package."""

pytest_plugins = ["devstack.pytest_plugin"]
