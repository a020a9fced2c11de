"""URLs reduced to their shape and known secrets masked: what any log, error, XCom or store column may show."""

from __future__ import annotations

import pytest

from cupid_airflow.core.redact import is_secret_name, path_shape, redact, url_secrets, url_shape


@pytest.mark.parametrize(
    ("url", "shape"),
    [
        (
            "https://hooks.slack.com/services/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",
            "https://hooks.slack.com/services/***/***/***",
        ),
        (
            "https://open.feishu.cn/open-apis/bot/v2/hook/6f0e2c9a-1b2c-4d5e-8f90-123456789abc",
            "https://open.feishu.cn/open-apis/bot/v2/hook/***",
        ),
        ("https://oapi.dingtalk.com/robot/send?access_token=abc123", "https://oapi.dingtalk.com/robot/send?***"),
        (
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?***",
        ),
        (
            "http://bot:hunter2@app.example:8080/cupid/callback?token=s3cr3t#frag",
            "http://app.example:8080/cupid/callback?***",
        ),
        ("127.0.0.1:20000/test/callback?token=s3cr3t", "127.0.0.1:20000/test/callback?***"),
        ("http://127.0.0.1:99999/cb?token=s3cr3t", "http://127.0.0.1/cb?***"),
        ("http://[::1]:8080/API/v1/Callback", "http://[::1]:8080/API/v1/Callback"),
    ],
)
def test_url_shape_keeps_scheme_host_port_and_word_segments_only(url: str, shape: str) -> None:
    assert url_shape(url) == shape
    for secret in ("hunter2", "s3cr3t", "abc123", "693a91f6", "6f0e2c9a", "Xy9Zab12", "frag"):
        assert secret not in url_shape(url)


def test_url_secrets_lists_what_the_shape_hides_in_every_encoding() -> None:
    found = url_secrets("http://bot:p%40ss@app/hook/Tok3nTok3nTok3n?token=a%2Fb&x=1")
    assert {
        "p%40ss",
        "p@ss",
        "Tok3nTok3nTok3n",
        "a%2Fb",
        "a/b",
        "http://bot:p%40ss@app/hook/Tok3nTok3nTok3n?token=a%2Fb&x=1",
    } <= set(found)
    assert url_secrets("http://app:8080/cupid/callback") == []


def test_redact_masks_known_secrets_and_shapes_every_url() -> None:
    text = "POST http://app:1/cb?token=s3cr3t failed: Bearer hunter2hunter2 at http://h/x."
    masked = redact(text, ["hunter2hunter2", "ab"])
    assert masked == "POST http://app:1/cb?*** failed: Bearer *** at http://h/x."
    assert redact("short ab stays", ["ab"]) == "short ab stays"


@pytest.mark.parametrize("name", ["Authorization", "X-Api-Key", "access_token", "X-Auth-Token", "Cookie", "password"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["Content-Type", "X-Team", "User-Agent", "Accept"])
def test_plain_names(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pw@hooks.example.com/services/T0123/B0456/XyZsecret?token=abc#f",
            "https://hooks.example.com/services/***/***/***?***",
        ),
        ("http://127.0.0.1:8080/v2/callback/user", "http://127.0.0.1:8080/v2/callback/user"),
        ("http://[::1]:9/hook", "http://[::1]:9/hook"),
        ("https://example.com/api/users/12345/hook", "https://example.com/api/users/***/hook"),
        ("HTTPS://Example.com", "https://example.com"),
    ],
)
def test_a_url_on_the_page_shows_scheme_host_and_path_shape_only(url: str, shown: str) -> None:
    assert url_shape(url) == shown


def test_an_endpoint_shows_its_path_shape() -> None:
    assert path_shape("/callback/3f9a8b7c6d5e?key=secret") == "/callback/***?***"
    assert path_shape("") == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "redirect 302 to https://h.example/hook/AbC123?token=zz (redirects are not followed)",
            "redirect 302 to https://h.example/hook/***?*** (redirects are not followed)",
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
def test_free_text_loses_what_looks_like_a_secret_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_nothing_stays_nothing() -> None:
    assert redact(None) is None
