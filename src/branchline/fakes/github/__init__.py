"""A fake GitHub REST API held to GitHub's own OpenAPI document, keeping one
repository's issues, pulls, comments, labels, statuses, check runs and deployments:
`FakeGitHub.start(state_dir, token=...)` runs it in a subprocess
(`python -m branchline.fakes.github`); `app.build_app` gives it as an ASGI app in
this process."""

from branchline.fakes.github.process import FakeGitHub, FakeGitHubError

__all__ = ["FakeGitHub", "FakeGitHubError"]
