"""Connection passwords never reach output, whatever form the connection takes."""

from __future__ import annotations

import pytest

from branchline.masking import mask_url


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://branchline:hunter2@127.0.0.1:5432/app", "hunter2"),
        ("postgres://u:pa%40ss@db/app", "pa%40ss"),
        ("host=db password=hunter2 dbname=app", "hunter2"),
        ("host=db password='with space' dbname=app", "with space"),
        ("postgresql://db/app?sslmode=disable&password=hunter2", "hunter2"),
        ("cannot connect to postgresql://u:hunter2@h/db: refused", "hunter2"),
    ],
)
def test_passwords_are_masked(text: str, secret: str) -> None:
    masked = mask_url(text)
    assert secret not in masked
    assert "***" in masked


def test_text_without_a_password_is_unchanged() -> None:
    text = "postgresql://db.example/app and host=db dbname=app"
    assert mask_url(text) == text
