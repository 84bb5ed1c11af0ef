"""`branchline init`: a commented starter branchline.toml built from what the project's
files say (a Procfile, manage.py, alembic.ini, a FastAPI app, package.json, ...), each
command marked with the file that told it, or as a guess."""

from __future__ import annotations

from branchline.scaffold.detect import detect_project
from branchline.scaffold.model import DetectedService, Detection, Note, TestJob
from branchline.scaffold.render import render_starter_config

__all__ = [
    "DetectedService",
    "Detection",
    "Note",
    "TestJob",
    "detect_project",
    "render_starter_config",
]
