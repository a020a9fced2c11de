"""What the failure-pool page and command may show of errors and callback targets."""

from __future__ import annotations

import pytest

from cupid_airflow.core.redact import path_shape, redact, url_shape


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@hooks.example.com/services/T0123/B0456/XyZsecret?token=abc#f", "https://hooks.example.com/services/*/*/*?***"),
        ("http://127.0.0.1:8080/v2/callback/user", "http://127.0.0.1:8080/v2/callback/user"),
        ("http://[::1]:9/hook", "http://[::1]:9/hook"),
        ("https://example.com/api/users/12345/hook", "https://example.com/api/users/*/hook"),
        ("HTTPS://Example.com", "https://example.com"),
    ],
)
def test_a_url_shows_scheme_host_and_path_shape_only(url: str, shown: str) -> None:
    assert url_shape(url) == shown


def test_an_endpoint_shows_its_path_shape() -> None:
    assert path_shape("/callback/3f9a8b7c6d5e?key=secret") == "/callback/*?***"
    assert path_shape("") == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "redirect 302 to https://h.example/hook/AbC123?token=zz (redirects are not followed)",
            "redirect 302 to https://h.example/hook/*?*** (redirects are not followed)",
        ),
        ('HTTP 401: {"password": "hunter2", "api_key":"k-1"}', 'HTTP 401: {"password": "***", "api_key":"***"}'),
        ("Authorization: Bearer eyJhbGciOi.abc.def, then", "Authorization: ***, then"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9 was refused", "Bearer *** was refused"),
        ("at root:s3cret@tcp(10.0.0.1:3306)/db", "at root:***@tcp(10.0.0.1:3306)/db"),
        ("x-auth-token=abcdef123 hmacSecret: zzz author: Bob", "x-auth-token=*** hmacSecret: *** author: Bob"),
        ("refused: nothing listens on 127.0.0.1:18080", "refused: nothing listens on 127.0.0.1:18080"),
        ("mysql://cupid:pw@db:3306/state failed", "mysql://db:3306/state failed"),
    ],
)
def test_free_text_loses_its_secrets_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_nothing_stays_nothing() -> None:
    assert redact(None) is None
