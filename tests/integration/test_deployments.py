"""`attnops deploy` on a real Prefect server: the spec's four deployments, and the retrain
trigger that turns one drift event for the spec's model into exactly one retrain run.

The session's test server runs Prefect's event, trigger and action services, so the runs
are created as in production; no worker is needed because nothing has to execute them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, StateType
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Pending, Running

from attnops.flows.deploy import DeployError, deploy

pytestmark = pytest.mark.usefixtures("prefect_server")

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIFT_EVENT = "attnops.drift.detected"
RUN_TIMEOUT_S = 30
SETTLE_S = 1.0
"""After the expected runs appear, how long to keep looking for an extra one. A second
automation (a trigger registered twice) would fire on the same event at the same moment."""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A spec deployed, edited (new monitor cron) and deployed again, as a user would."""
    name = f"deploy-test-{uuid.uuid4().hex[:8]}"  # the session's server is shared
    spec = {
        "name": name,
        "data": {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"},
        "monitoring": {"schedule_cron": "0 * * * *"},
    }
    spec_path = tmp_path_factory.mktemp("deploy") / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    pool = f"pool-{name}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)  # deploy reads ./prefect.yaml, like the CLI
        deploy(str(spec_path), work_pool=pool)
        spec["monitoring"]["schedule_cron"] = "*/5 * * * *"
        spec_path.write_text(yaml.safe_dump(spec))
        names = deploy(str(spec_path), work_pool=pool)
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name(f"retrain/{name}")
    return SimpleNamespace(
        name=name, spec_path=spec_path, pool=pool, names=names, retrain_id=retrain.id
    )


def _retrain_runs(client, deployed) -> dict:
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployed.retrain_id]))
    )
    return {run.id: run for run in runs}


def _emit_drift(model_name: str):
    event = emit_event(
        DRIFT_EVENT,
        resource={"prefect.resource.id": model_name},
        payload={"alarms": ["embedding_drift"]},
    )
    assert event is not None, "events are not enabled against the test server"
    return event


def _new_runs(client, deployed, before: dict, count: int) -> list:
    """The runs created since `before`, once there are `count` of them (or the timeout)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    new = []
    while time.monotonic() < deadline:
        new = [
            run for run_id, run in _retrain_runs(client, deployed).items() if run_id not in before
        ]
        if len(new) >= count:
            time.sleep(SETTLE_S)
            break
        time.sleep(0.1)
    return [run for run_id, run in _retrain_runs(client, deployed).items() if run_id not in before]


def test_deploy_registers_the_four_deployments_with_the_specs_values(deployed):
    assert deployed.names == [
        f"{flow}/{deployed.name}" for flow in ("train", "monitor", "retrain", "release")
    ]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(deployed.pool).type == "process"
        deployments = {name: client.read_deployment_by_name(name) for name in deployed.names}
        for deployment in deployments.values():
            assert deployment.work_pool_name == deployed.pool
            assert deployment.parameters["spec_path"] == str(deployed.spec_path)
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ]

        monitor = deployments[f"monitor/{deployed.name}"]
        assert [s.schedule.cron for s in monitor.schedules] == ["*/5 * * * *"], (
            "redeploying must replace the schedule, not add one"
        )
        for flow in ("train", "retrain", "release"):
            assert deployments[f"{flow}/{deployed.name}"].schedules == []

        retrain = deployments[f"retrain/{deployed.name}"]
        assert retrain.global_concurrency_limit.limit == 1
        assert retrain.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        automations = client.read_resource_related_automations(f"prefect.deployment.{retrain.id}")
        assert len(automations) == 1, "redeploying must replace the trigger, not add one"
        trigger = automations[0].trigger
        assert trigger.expect == {DRIFT_EVENT}
        assert trigger.match.model_dump() == {"prefect.resource.id": deployed.name}
        assert (trigger.posture, trigger.threshold, trigger.within.total_seconds()) == (
            "Reactive",
            1,
            0,
        )


def test_drift_event_starts_exactly_one_retrain_run_carrying_its_id(deployed):
    with get_client(sync_client=True) as client:
        before = _retrain_runs(client, deployed)
        event = _emit_drift(deployed.name)
        runs = _new_runs(client, deployed, before, count=1)
    assert len(runs) == 1
    assert runs[0].parameters == {"spec_path": str(deployed.spec_path), "event_id": str(event.id)}
    assert runs[0].state_type == StateType.SCHEDULED


def test_drift_event_for_another_model_starts_nothing(deployed):
    with get_client(sync_client=True) as client:
        before = _retrain_runs(client, deployed)
        _emit_drift(f"{deployed.name}-other")
        _emit_drift(f"prefix-{deployed.name}")
        # Ours goes last: once its run exists, the others have been judged too.
        ours = _emit_drift(deployed.name)
        runs = _new_runs(client, deployed, before, count=1)
    assert [run.parameters["event_id"] for run in runs] == [str(ours.id)]


def test_each_drift_event_starts_its_own_run(deployed):
    with get_client(sync_client=True) as client:
        before = _retrain_runs(client, deployed)
        events = [_emit_drift(deployed.name) for _ in range(2)]
        runs = _new_runs(client, deployed, before, count=2)
    assert sorted(run.parameters["event_id"] for run in runs) == sorted(str(e.id) for e in events)


def test_a_second_retrain_is_cancelled_while_one_runs(deployed):
    """CANCEL_NEW: the worker's attempt to start a second run cancels it instead of queueing."""
    with get_client(sync_client=True) as client:
        first = client.create_flow_run_from_deployment(deployed.retrain_id)
        second = client.create_flow_run_from_deployment(deployed.retrain_id)
        assert client.set_flow_run_state(first.id, Pending()).state.type == StateType.PENDING
        client.set_flow_run_state(first.id, Running())
        try:
            assert client.set_flow_run_state(second.id, Pending()).state.type == (
                StateType.CANCELLED
            )
        finally:  # give the slot back for whatever runs next
            client.set_flow_run_state(first.id, Completed(), force=True)


def test_deploy_without_a_reachable_server_names_prefect_api_url(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("name: x\ndata: {train: a.csv, validation: b.csv, test: c.csv}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        with (
            temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
            pytest.raises(DeployError) as error,
        ):
            deploy(str(spec_path))
    message = str(error.value)
    assert "PREFECT_API_URL=http://127.0.0.1:9/api" in message
    assert "\n" not in message
