"""Pure parts of the Graph token handling: field checks, msal error mapping, URL redaction."""

from __future__ import annotations

import pytest

from email_channels.graph_auth import GraphTokenError, check_app_fields, map_token_error
from email_channels.redaction import REDACTED, redact


@pytest.mark.parametrize("field", ["tenant_id", "client_id", "client_secret"])
@pytest.mark.parametrize("padding", [" {}", "{} ", "{}\n", "\t{}"])
def test_padded_app_fields_are_refused_naming_the_field_not_the_value(field, padding):
    """A leading/trailing space or line break in any of the three fields names that field."""
    values = {"tenant_id": "contoso", "client_id": "abc-123", "client_secret": "s3cr3t~value"}
    values[field] = padding.format(values[field])
    with pytest.raises(GraphTokenError) as error:
        check_app_fields(values["tenant_id"], values["client_id"], values["client_secret"])
    assert error.value.field == field
    assert error.value.step == "token"
    assert str(error.value).startswith(field)
    assert "s3cr3t~value" not in str(error.value)


@pytest.mark.parametrize(
    ("answer", "field", "words"),
    [
        ({"error": "invalid_client", "error_codes": [7000215]}, "client_secret", "refused"),
        ({"error": "unauthorized_client", "error_codes": [700016]}, "client_id", "not an app"),
        ({"error": "invalid_request", "error_codes": [90002]}, "tenant_id", "not a known"),
        ({"error": "invalid_request", "error_codes": [50011]}, "redirect_uri", "registered"),
        ({"error": "invalid_grant", "error_codes": [50173]}, None, "authorise again"),
        ({"error": "invalid_grant", "error_codes": [700082]}, None, "expired or was revoked"),
        ({"error": "no_account"}, None, "Save and authorise"),
    ],
)
def test_msal_errors_become_token_errors_naming_what_to_fix(answer, field, words):
    """Each documented AADSTS answer maps to step token and, where one is at fault, its field."""
    error = map_token_error({**answer, "error_description": "AADSTS: details"}, delegated=True)
    assert isinstance(error, GraphTokenError)
    assert error.step == "token"
    assert error.field == field
    assert words in str(error)


def test_identity_platform_outage_is_retriable():
    """temporarily_unavailable is a TransientError, not a channel to fix."""
    error = map_token_error({"error": "temporarily_unavailable"}, delegated=False)
    assert error.retriable


def test_credentials_in_url_queries_are_redacted():
    """A Graph upload URL's authtoken and an OAuth code never reach a log line."""
    url = "https://outlook.office.com/api/gv1.0/users('a')/AttachmentSessions('b')?authtoken=eyJ0.x"
    assert redact(url).endswith(f"?authtoken={REDACTED}")
    assert (
        redact("https://x/cb?state=abc&code=0.AR.secret")
        == f"https://x/cb?state=abc&code={REDACTED}"
    )
