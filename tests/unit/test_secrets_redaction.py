"""Redaction: every credential a job or pyiceberg can carry is masked in every text form.

The pyiceberg property names are read from the installed pyiceberg's own sources, so a
credential property added by a pyiceberg upgrade is tested without editing this file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyiceberg
import pytest

from coordinator.core.logs import redact
from coordinator.state.base import safe_url

CANARY = "Cnry-7f3a 9Q"  # with a space: passwords with spaces must be masked whole
_PYICEBERG = Path(pyiceberg.__file__).parent
_CONST = re.compile(r'^([A-Z0-9_]+)\s*=\s*"([a-z0-9_.-]+)"', re.M)
_CRED_NAME = re.compile(
    r"SECRET|TOKEN|ACCESS_KEY|ACCOUNT_KEY|CREDENTIAL|CONNECTION_STRING|SAS|PASSWORD"
)


def pyiceberg_credential_properties() -> list[str]:
    """Every credential-bearing property constant pyiceberg defines (io, catalogs)."""
    files = [_PYICEBERG / "io" / "__init__.py", *(_PYICEBERG / "catalog").rglob("*.py")]
    found: set[str] = set()
    for f in files:
        for name, value in _CONST.findall(f.read_text()):
            if _CRED_NAME.search(name) and not name.endswith(("_DEFAULT", "_EXPIRES_AT_MS")):
                found.add(value)
    # keys pyiceberg reads as plain strings (REST auth, fsspec/boto kwargs)
    found |= {"client_secret", "aws_secret_access_key", "aws_session_token", "sas_token"}
    found |= {"access_token", "session_token", "secret_key", "initial_token"}
    return sorted(found - {"vended-credentials"})


PROPS = pyiceberg_credential_properties()


def test_the_property_list_holds_every_documented_credential() -> None:
    named = {
        "s3.secret-access-key", "s3.session-token", "s3.access-key-id", "credential", "token",
        "gcs.oauth2.token", "adls.account-key", "adls.sas-token", "client.secret-access-key",
        "client.session-token", "client.access-key-id", "glue.secret-access-key",
        "glue.session-token", "dynamodb.secret-access-key", "adls.client-secret",
        "adls.connection-string", "hf.token",
    }  # fmt: skip
    assert named <= set(PROPS)


FORMS = {
    "key=value": lambda k: f"loading catalog {k}='{CANARY}' region=eu",
    "key=value unquoted": lambda k: f"props {k}={CANARY.split()[0]}&region=eu",
    "key: value": lambda k: f"{k}: {CANARY.split()[0]}",
    "json": lambda k: json.dumps({"region": "eu", k: CANARY, "n": 1}),
    "dict repr": lambda k: repr({"region": "eu", k: CANARY}),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("prop", PROPS)
def test_every_pyiceberg_credential_is_masked_in_every_form(prop: str, form: str) -> None:
    text = FORMS[form](prop)
    out = redact(text)
    assert CANARY.split()[0] not in out and CANARY.split()[-1] not in out, out
    assert prop in out and "***" in out  # the key stays readable, only the value goes


@pytest.mark.parametrize(
    "text",
    [
        "credential=CANARY1",
        "adls.account-key=CANARY1",
        "AccountKey=CANARY1;EndpointSuffix=core",
        "s3.access-key-id=CANARY1",
        "pwd=CANARY1",
        "PWD=CANARY1;UID=app",
        "Authorization: Bearer CANARY1.CANARY1",
        "bearer CANARY1",
        "postgresql://:CANARY1@db/x",
        "postgresql://app:CANARY1 with spaces@db/x",
        "postgresql://app:CAN@RY1@db/x",
        "{'sasl.password': 'CANARY1 two words'}",
        '{"password": "CANARY1 two words"}',
        "postgresql+psycopg://u@h/db?password=CANARY1&sslpassword=CANARY1&passfile=CANARY1",
    ],
)
def test_redact_covers_what_it_used_to_miss(text: str) -> None:
    out = redact(text)
    assert "CANARY1" not in out and "RY1" not in out, out


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "job=orders slice_id=k-0-00000 rows=120 host=db partition=2 key=table.uri"
    assert redact(text) == text
    assert redact("kafka bootstrap 127.0.0.1:9092") == "kafka bootstrap 127.0.0.1:9092"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u@h/db?password=CANARY2",
        "postgresql+psycopg://u@h/db?sslmode=require&sslpassword=CANARY2",
        "postgresql+psycopg://u@h/db?passfile=/home/CANARY2/.pgpass",
        "postgresql+psycopg://u:CANARY2@h/db",
        "postgresql://u:pre@CANARY2@h/db",
        "not a url password=CANARY2",
    ],
)
def test_safe_url_masks_query_and_userinfo_passwords(url: str) -> None:
    shown = safe_url(url)
    assert "CANARY2" not in shown, shown
    if "://" in url:
        assert "h/db" in shown  # still says where the store is
