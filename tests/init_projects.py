"""Small projects of the kinds `branchline init` detects, written into a directory."""

from __future__ import annotations

from pathlib import Path

MANAGE_PY = """\
#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
"""
SETTINGS = """\
from pathlib import Path
import dj_database_url
BASE_DIR = Path(__file__).resolve().parent.parent
ROOT_URLCONF = "mysite.urls"
DATABASES = {"default": dj_database_url.config()}
STATIC_ROOT = BASE_DIR / "staticfiles"
"""
URLS = """\
from django.http import HttpResponse
from django.urls import path
urlpatterns = [path("healthz/", lambda request: HttpResponse("ok"))]
"""
FASTAPI_MAIN = """\
from fastapi import FastAPI

app = FastAPI(title="items")


@app.get("/api/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
"""


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
