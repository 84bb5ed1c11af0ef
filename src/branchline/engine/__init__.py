"""Workflows, runs, jobs and steps on procrastinate: the reference's GitHub
Actions, run by branchline's own workers. The engine never imports providers:
provider work reaches it as named actions registered by the pipelines."""
