"""The ComputeProvider contract, for the in-memory fake and the local provider:
one release per commit, blue-green deploys that retire the release they replace,
rollback to the previous release with the environment's current DeploymentEnv, an
unhealthy release never made live, and delete that stops everything once."""

from __future__ import annotations

import pytest

from branchline.errors import UsageError
from branchline.providers.compute import ComputeProvider, Deployment, DeploymentEnv, UnhealthyError
from tests.contract.conftest import ComputeContract


def given(mark: str) -> DeploymentEnv:
    return DeploymentEnv(vars={"CONTRACT_MARK": mark}, secrets={"CONTRACT_SECRET": f"s-{mark}"})


def seen(mark: str) -> dict[str, str]:
    return {"CONTRACT_MARK": mark, "CONTRACT_SECRET": f"s-{mark}"}


def statuses(compute: ComputeContract, *deployments: Deployment) -> list[str]:
    environment = deployments[0].environment
    now = {d.id: d.status for d in compute.run(compute.provider.list_deployments(environment))}
    return [now[d.id] for d in deployments]


def test_the_provider_satisfies_the_protocol(compute: ComputeContract) -> None:
    assert isinstance(compute.provider, ComputeProvider)


def test_build_is_idempotent_per_commit(compute: ComputeContract) -> None:
    provider, run = compute.provider, compute.run
    first = compute.release()
    again = run(provider.build(compute.service, first.commit))
    assert (again.id, again.commit, again.build_number) == (
        first.id, first.commit, first.build_number,
    )  # fmt: skip
    second = compute.release()
    assert second.id != first.id and second.commit != first.commit
    assert [r.id for r in run(provider.releases(compute.service))][:2] == [second.id, first.id]
    with pytest.raises(UsageError, match="no service"):
        run(provider.build("no-such-service", first.commit))


def test_deploy_makes_the_release_live_with_the_env_it_was_given(
    compute: ComputeContract,
) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    release = compute.release()
    compute.set_source(given("from-the-source"))  # a deploy uses what it is given
    deployed = run(provider.deploy(compute.service, environment, release, given("deploy-1")))
    assert deployed.status == "live" and deployed.release.id == release.id
    assert (deployed.service, deployed.environment) == (compute.service, environment)
    assert deployed.url == compute.url_of(environment)
    assert compute.serving(deployed)
    assert compute.seen(deployed) == seen("deploy-1")
    listed = run(provider.list_deployments(environment))
    assert [(d.id, d.status) for d in listed] == [(deployed.id, "live")]
    assert deployed.id in {d.id for d in run(provider.list_deployments())}


def test_a_second_deploy_retires_the_first(compute: ComputeContract) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    first = run(provider.deploy(compute.service, environment, compute.release(), given("v1")))
    second = run(provider.deploy(compute.service, environment, compute.release(), given("v2")))
    assert statuses(compute, first, second) == ["stopped", "live"]
    assert not compute.serving(first) and compute.serving(second)
    assert compute.seen(second) == seen("v2")
    listed = run(provider.list_deployments(environment))
    assert [d.id for d in listed] == [second.id, first.id]  # newest first


def test_rollback_brings_the_previous_release_back_with_the_current_env(
    compute: ComputeContract,
) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    v1, v2 = compute.release(), compute.release()
    first = run(provider.deploy(compute.service, environment, v1, given("deploy-1")))
    second = run(provider.deploy(compute.service, environment, v2, given("deploy-2")))
    compute.set_source(given("from-the-source"))
    back = run(provider.rollback(compute.service, environment))
    assert back.release.id == v1.id and back.status == "live"
    assert back.id not in (first.id, second.id)
    assert statuses(compute, first, second, back) == ["stopped", "rolled_back", "live"]
    assert compute.serving(back) and not compute.serving(second)
    assert compute.seen(back) == seen("from-the-source")


def test_rollback_without_an_earlier_release_is_a_usage_error(compute: ComputeContract) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    with pytest.raises(UsageError):
        run(provider.rollback(compute.service, environment))  # nothing deployed at all
    only = run(provider.deploy(compute.service, environment, compute.release(), given("only")))
    with pytest.raises(UsageError):
        run(provider.rollback(compute.service, environment))
    assert statuses(compute, only) == ["live"] and compute.serving(only)


def test_an_unhealthy_release_is_refused_and_the_old_one_stays_live(
    compute: ComputeContract,
) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    good = run(provider.deploy(compute.service, environment, compute.release(), given("good")))
    bad = compute.release(healthy=False)
    with pytest.raises(UnhealthyError, match="did not become healthy") as info:
        run(provider.deploy(compute.service, environment, bad, given("bad")))
    assert info.value.health and info.value.health["healthy"] is False
    listed = run(provider.list_deployments(environment))
    assert [(d.release.id, d.status) for d in listed] == [(bad.id, "failed"),
                                                          (good.release.id, "live")]  # fmt: skip
    assert compute.serving(good) and compute.seen(good) == seen("good")


def test_an_unhealthy_first_release_leaves_nothing_live(compute: ComputeContract) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    with pytest.raises(UnhealthyError):
        run(provider.deploy(compute.service, environment, compute.release(healthy=False),
                            given("bad")))  # fmt: skip
    listed = run(provider.list_deployments(environment))
    assert [d.status for d in listed] == ["failed"]
    with pytest.raises(UsageError):
        run(provider.rollback(compute.service, environment))


def test_delete_stops_everything_and_is_false_the_second_time(compute: ComputeContract) -> None:
    provider, run = compute.provider, compute.run
    environment = compute.environment()
    assert run(provider.delete(compute.service, environment)) is False  # nothing ran
    first = run(provider.deploy(compute.service, environment, compute.release(), given("v1")))
    second = run(provider.deploy(compute.service, environment, compute.release(), given("v2")))
    other = compute.environment()  # another environment is left alone
    elsewhere = run(provider.deploy(compute.service, other, compute.release(), given("o")))
    assert run(provider.delete(compute.service, environment)) is True
    assert statuses(compute, first, second) == ["stopped", "stopped"]
    assert not compute.serving(second)
    assert run(provider.delete(compute.service, environment)) is False
    assert statuses(compute, elsewhere) == ["live"] and compute.serving(elsewhere)
    with pytest.raises(UsageError):
        run(provider.rollback(compute.service, environment))
