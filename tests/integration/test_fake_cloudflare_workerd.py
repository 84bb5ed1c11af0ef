"""The fake Cloudflare running each deployed version in workerd (its default runner):
a Worker uploaded through the official `cloudflare` SDK really runs its JavaScript
(its plain-text bindings, the presence of its secret, its compatibility flags), a new
version and a rollback change what answers, a version that throws at start-up or does
not parse is refused with Cloudflare's error while the one before keeps answering,
deleting a script or stopping the fake ends its workerd processes, and no file under
the fake's state directory holds a secret's value. Last, the real notes Worker
bundled by wrangler, uploaded module by module."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import pytest
from cloudflare import Cloudflare

from branchline.fakes.cloudflare import FakeCloudflare
from branchline.fakes.cloudflare.runners import Deployable, RunnerError, WorkerdRunner
from branchline.fakes.running import kill_group
from branchline.providers.compute import workerd
from tests import workers_tools
from tests.conftest import eventually, leftover_processes, new_state_dir, remove_state_dir
from tests.integration.test_workerd import build

pytestmark = pytest.mark.integration

TOKEN = "cf-fake-token-workerd-0123456789"
SECRET = "s3cret-of-the-workerd-runner-never-shown"
OTHER_SECRET = "another-s3cret-put-later"
DATE = "2024-08-06"


def worker(label: str, *, top: str = "") -> str:
    """A Worker whose answer is computed: its label, its bindings, a sum, base64 by
    node:buffer (only under nodejs_compat), whether its secret is set, and its length."""
    return f"""\
import {{ Buffer }} from "node:buffer";
{top}
export default {{
  async fetch(request, env) {{
    const url = new URL(request.url);
    console.log(`{label} served ${{url.pathname}}`);
    return Response.json({{
      label: "{label}",
      mode: env.MODE ?? null,
      sum: [1, 2, 3, 4, 5, 6].reduce((a, b) => a + b, 0) * 2,
      b64: Buffer.from("{label}").toString("base64"),
      secret_set: typeof env.API_KEY === "string",
      secret_length: env.API_KEY ? env.API_KEY.length : null,
      path: url.pathname,
    }});
  }},
}};
"""


def metadata(**extra: Any) -> dict[str, Any]:
    return {
        "main_module": "worker.js",
        "compatibility_date": DATE,
        "compatibility_flags": ["nodejs_compat"],
        "bindings": [
            {"type": "plain_text", "name": "MODE", "text": "preview"},
            {"type": "secret_text", "name": "API_KEY", "text": SECRET},
        ],
        **extra,
    }


def files(text: str) -> list[tuple[str, bytes, str]]:
    return [("worker.js", text.encode(), "application/javascript+module")]


def expected(label: str, path: str = "/health") -> dict[str, Any]:
    return {
        "label": label, "mode": "preview", "sum": 42,
        "b64": base64.b64encode(label.encode()).decode(),
        "secret_set": True, "secret_length": len(SECRET), "path": path,
    }  # fmt: skip


@pytest.fixture(scope="module")
def fake(cluster_root: Path) -> Iterator[FakeCloudflare]:
    workers_tools.required()
    state = new_state_dir(cluster_root)
    cf = FakeCloudflare.start(state, token=TOKEN)  # workerd: the default runner
    try:
        yield cf
        assert cf.calls()["invalid"] == []
        assert cf.stop() == 0
        assert leftover_processes(state) == []
        # Not one file under the fake's state directory holds the secret's value.
        for path in state.rglob("*"):
            kept = path.read_bytes() if path.is_file() else b""
            assert SECRET.encode() not in kept and OTHER_SECRET.encode() not in kept, path
    finally:
        cf.stop()
        remove_state_dir(state)


def sdk(fake: FakeCloudflare) -> Cloudflare:
    return Cloudflare(api_token=TOKEN, base_url=fake.url, max_retries=0)


def upload(fake: FakeCloudflare, name: str, text: str) -> Any:
    return sdk(fake).workers.scripts.update(
        name, account_id=fake.account_id, metadata=metadata(), files=files(text)
    )


def new_version(fake: FakeCloudflare, name: str, text: str) -> str:
    answer = sdk(fake).workers.scripts.versions.with_raw_response.create(
        name, account_id=fake.account_id, metadata=metadata(), files=files(text)
    )
    return str(json.loads(answer.http_response.text)["result"]["id"])


def deploy(fake: FakeCloudflare, name: str, version_id: str) -> httpx.Response:
    """POST .../deployments with `version_id` at 100% (raw: a refusal is an answer)."""
    with httpx.Client(base_url=fake.url, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:  # fmt: skip
        return client.post(
            f"/accounts/{fake.account_id}/workers/scripts/{name}/deployments",
            json={"strategy": "percentage",
                  "versions": [{"version_id": version_id, "percentage": 100}]},
        )  # fmt: skip


def answer(fake: FakeCloudflare, name: str, path: str = "/health") -> Any:
    response = httpx.get(fake.script_url(name) + path, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def workerd_pids(state: Path) -> list[int]:
    """The workerd processes the fake runs for `state` (found by their environment)."""
    return [pid for pid, described in leftover_processes(state) if "workerd serve" in described]


def test_a_deployed_worker_runs_its_javascript(fake: FakeCloudflare) -> None:
    made = upload(fake, "web", worker("web-1"))
    assert made.id == "web"
    assert answer(fake, "web") == expected("web-1")
    assert answer(fake, "web", "/other") == expected("web-1", "/other")
    # Its console output goes to the script's log under the fake's directory.
    log = fake.state_dir / "workers" / "web" / "workerd.log"
    assert eventually(lambda: "web-1 served /other" in log.read_text(), timeout=10)
    # The runner's readiness probe ran none of its code: the two requests only.
    served = [line for line in log.read_text().splitlines() if " served " in line]
    assert served == ["web-1 served /health", "web-1 served /other"]
    # workerd's environment: what it needs, the leak check's marker and the secret;
    # nothing else of the fake's (its API token, say).
    (pid,) = workerd_pids(fake.state_dir)
    environ = dict(
        item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if item
    )  # fmt: skip
    assert set(environ) <= {b"PATH", b"HOME", b"TMPDIR", b"BRANCHLINE_STATE_DIR", b"API_KEY"}
    assert environ[b"API_KEY"] == SECRET.encode()
    assert TOKEN.encode() not in b"".join(environ.values())
    # The config names the secret; its value is in no file.
    configs = list((fake.state_dir / "workers" / "web").glob("*/config.capnp"))
    assert len(configs) == 1
    assert '(name = "API_KEY", fromEnvironment = "API_KEY")' in configs[0].read_text()
    assert '(name = "MODE", text = "preview")' in configs[0].read_text()
    for path in fake.state_dir.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    # A secret changed through the API is a new version, deployed: the Worker sees it.
    sdk(fake).workers.scripts.secrets.update(
        "web", account_id=fake.account_id, name="API_KEY", text=OTHER_SECRET, type="secret_text"
    )
    assert answer(fake, "web")["secret_length"] == len(OTHER_SECRET)
    assert len(workerd_pids(fake.state_dir)) == 1


def test_versions_a_rollback_and_versions_that_will_not_start(fake: FakeCloudflare) -> None:
    upload(fake, "api", worker("api-1"))
    one = fake.running_version("api")
    assert answer(fake, "api") == expected("api-1")
    two = new_version(fake, "api", worker("api-2"))
    assert answer(fake, "api")["label"] == "api-1"  # a version alone changes nothing
    assert deploy(fake, "api", two).status_code == 200
    assert answer(fake, "api") == expected("api-2")
    assert fake.running_version("api") == two
    # The rollback: the first version deployed again answers again.
    assert deploy(fake, "api", one).status_code == 200
    assert answer(fake, "api") == expected("api-1")
    url = fake.script_url("api")

    # A version whose module throws at start-up: Cloudflare's 10021, the exception's
    # words; the deployment is undone and the first version keeps answering.
    throws = new_version(fake, "api", worker("api-3", top='throw new Error("boom at start");'))
    refused = deploy(fake, "api", throws)
    assert refused.status_code == 400
    body = refused.json()
    assert body["success"] is False and body["errors"][0]["code"] == 10021
    assert "boom at start" in body["errors"][0]["message"]
    assert SECRET not in refused.text
    assert fake.running_version("api") == one and fake.script_url("api") == url
    assert answer(fake, "api") == expected("api-1")
    # An upload that does not parse: refused alike through the SDK, nothing changes.
    with pytest.raises(cloudflare.BadRequestError) as bad:
        upload(fake, "api", "export default { fetch( }")
    assert bad.value.body["errors"][0]["code"] == 10021
    assert "SyntaxError" in bad.value.body["errors"][0]["message"]
    assert answer(fake, "api") == expected("api-1")
    history = sdk(fake).workers.scripts.deployments.with_raw_response.list(
        "api", account_id=fake.account_id
    )
    deployed = json.loads(history.http_response.text)["result"]["deployments"]
    assert [d["versions"][0]["version_id"] for d in deployed] == [one, two, one]
    # One workerd per script, however many versions it had (or failed to start).
    assert len(workerd_pids(fake.state_dir)) == len(fake.state()["scripts"])


def test_deleting_a_script_stops_its_workerd(fake: FakeCloudflare) -> None:
    before = set(workerd_pids(fake.state_dir))
    upload(fake, "gone", worker("gone-1"))
    url = fake.script_url("gone")
    assert answer(fake, "gone")["label"] == "gone-1"
    (pid,) = set(workerd_pids(fake.state_dir)) - before
    sdk(fake).workers.scripts.delete("gone", account_id=fake.account_id)
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=10)
    assert set(workerd_pids(fake.state_dir)) == before
    assert list((fake.state_dir / "workers" / "gone").glob("*/config.capnp")) == []


def test_stop_and_a_group_kill_leave_no_process(cluster_root: Path) -> None:
    workers_tools.required()
    for how in ("stop", "kill the group"):
        state = new_state_dir(cluster_root)
        cf = FakeCloudflare.start(state, token=TOKEN, runner="workerd")
        try:
            upload(cf, "one", worker("one"))
            upload(cf, "two", worker("two"))
            assert len(workerd_pids(state)) == 2
            assert len(leftover_processes(state)) == 3  # and the fake
            if how == "stop":
                assert cf.stop() == 0
            else:
                kill_group(cf.process)  # what `stop` does to a fake that hangs
            assert eventually(lambda s=state: leftover_processes(s) == [], timeout=10), how
        finally:
            cf.stop()
            remove_state_dir(state)


def test_the_runner_on_its_own(cluster_root: Path) -> None:
    """WorkerdRunner without the fake: how long a version takes to start, an unknown
    module type refused by name, a failed start keeping the old version, close."""
    tools = workers_tools.required()
    directory = new_state_dir(cluster_root)
    runner = WorkerdRunner(directory / "workers", tools=tools)

    def version(label: str, text: str | None = None, types: str = "") -> Deployable:
        return Deployable(
            script="timed", version_id=label, main_module="worker.js",
            modules={"worker.js": (text or worker(label)).encode()},
            module_types={"worker.js": types or "application/javascript+module"},
            vars={"MODE": "preview"}, secrets={"API_KEY": SECRET}, compatibility_date=DATE,
            compatibility_flags=("nodejs_compat",),
        )  # fmt: skip

    try:
        times = []
        for n in range(5):
            began = time.monotonic()
            url = runner.start(version(f"v{n}"))
            times.append(time.monotonic() - began)
            assert httpx.get(url + "/health", timeout=10).json() == expected(f"v{n}")
        with pytest.raises(RunnerError, match="text/x-python"):
            runner.start(version("py", types="text/x-python"))
        with pytest.raises(RunnerError, match="boom") as failed:
            runner.start(version("bad", f"throw new Error('boom {SECRET}'); export default {{}}"))
        assert SECRET not in str(failed.value)  # its log lines, the secret masked
        # A Worker that never finishes starting: given up on after the timeout.
        runner.timeout = 2
        began = time.monotonic()
        with pytest.raises(RunnerError, match="did not answer within 2 s"):
            runner.start(version("loops", "while (true) {} export default {}"))
        print(f"a start that never answers given up on in {time.monotonic() - began:.1f} s")
        assert httpx.get(url, timeout=10).json()["label"] == "v4"
        assert len(workerd_pids(directory)) == 1
        # Only the running version's files are kept (a stopped or failed one's go).
        homes = [h.name.split("-")[0] for h in (directory / "workers" / "timed").iterdir()
                 if h.is_dir()]  # fmt: skip
        assert homes == ["v4"]
        print(f"workerd version start: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}) over {len(times)}")  # fmt: skip
    finally:
        runner.close()
    assert leftover_processes(directory) == []
    shutil.rmtree(directory, ignore_errors=True)


CONTENT_TYPES = {"esModule": "application/javascript+module", "commonJsModule":
                 "application/javascript", "text": "text/plain",
                 "data": "application/octet-stream", "wasm": "application/wasm"}  # fmt: skip


def test_the_notes_worker_bundled_by_wrangler(fake: FakeCloudflare, tmp_path: Path) -> None:
    """The real notes Worker: `npm ci`, `wrangler deploy --dry-run --outdir`, then each
    module of its bundle uploaded with its content type (no database: the routes that
    need none)."""
    tools = workers_tools.required()
    app = tmp_path / "notes"
    shutil.copytree(workers_tools.NOTES_WORKER, app)
    build(app, tmp_path / "bundle", tools)
    bundle = workerd.bundle_from_dir(tmp_path / "bundle", app / "wrangler.toml")
    parts = [(name, module.content, CONTENT_TYPES[module.kind])
             for name, module in bundle.modules.items()]  # fmt: skip
    sdk(fake).workers.scripts.update(
        "notes", account_id=fake.account_id, files=parts,
        metadata={
            "main_module": bundle.entry, "compatibility_date": bundle.compatibility_date,
            "compatibility_flags": list(bundle.compatibility_flags),
            "bindings": [
                {"type": "plain_text", "name": "BRANCHLINE_COMMIT", "text": "c0ffee"},
                {"type": "plain_text", "name": "GREETING", "text": "hello from the fake"},
                {"type": "secret_text", "name": "API_SECRET", "text": SECRET},
            ],
        },
    )  # fmt: skip
    assert answer(fake, "notes") == {"status": "ok", "commit": "c0ffee"}
    assert answer(fake, "notes", "/var/GREETING") == {"GREETING": "hello from the fake"}
    assert answer(fake, "notes", "/secret") == {
        "set": True, "sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
    }  # fmt: skip
