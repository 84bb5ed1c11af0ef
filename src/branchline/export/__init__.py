"""Files written from a project's config for other tools (GitHub Actions workflows)."""
