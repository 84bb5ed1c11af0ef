"""A fake Neon API (v2) held to Neon's own OpenAPI document and backed by real local
Postgres clusters: `FakeNeon.start(state_dir, api_key=...)` runs it in a subprocess
(`python -m branchline.fakes.neon`); `app.FakeNeonApp` and `world.NeonWorld` are the
server's parts."""

from branchline.fakes.neon.process import FakeNeon, FakeNeonError

__all__ = ["FakeNeon", "FakeNeonError"]
