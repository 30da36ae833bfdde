"""`attnops deploy`: register the flows' Prefect deployments, declared in prefect.yaml, for a spec.

prefect.yaml stays the declaration (plain `prefect deploy --all` reads it too); this module
applies one spec's values to it and registers the result with the Prefect API in use.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentTriggerTypes
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.workers.process import ProcessWorker
from pydantic import TypeAdapter, ValidationError

from attnops.flows.flow_source import FlowSourceError, read_flow
from attnops.spec import PipelineSpec, load_spec

PREFECT_FILE = "prefect.yaml"
WORKING_DIRECTORY_STEP = "prefect.deployments.steps.set_working_directory"
_TRIGGER = TypeAdapter(DeploymentTriggerTypes)
# fmt: off
_DEPLOYMENT_KEYS = frozenset((
    "name", "entrypoint", "description", "tags", "parameters", "schedules", "concurrency_limit",
    "triggers", "pull", "work_pool",
))
# fmt: on
"""The prefect.yaml deployment keys applied here; any other is refused, not ignored."""


class DeployError(RuntimeError):
    """The deployments cannot be registered; the message says what to do."""


def deploy(spec_path: str, *, work_pool: str = "attnops") -> list[str]:
    """Register the spec's `train`, `monitor`, `retrain` and `release` deployments.

    Reads ./prefect.yaml (run it from the repository root, like every attnops command) and
    applies the spec: each deployment is named after the spec's `name` and gets
    `spec_path`, the monitor's cron schedule is `monitoring.schedule_cron`, the retrain
    trigger matches `attnops.drift.detected` events whose resource id is the spec's name,
    and flow code is this working folder (no build, push or clone). Deploying again
    updates the deployments in place and replaces their triggers, so one drift event still
    starts one retrain.

    Nothing runs until a worker polls the pool. Start one in the repository root, against
    the same server: `prefect worker start --pool attnops`.

    Args:
        spec_path: The pipeline spec, e.g. configs/support-tickets.yaml.
        work_pool: Work pool the runs go to; a process pool of that name is created if
            there is none (an existing pool is used whatever its type).

    Returns:
        The deployments' full names, e.g. "retrain/support-tickets" (what
        `prefect deployment run` takes).

    Raises:
        SpecError: The spec does not load.
        DeployError: No Prefect server is reachable (PREFECT_API_URL), or prefect.yaml is
            missing or invalid.
    """
    spec = load_spec(spec_path)
    root = Path.cwd().resolve()
    declaration = _read_declaration(root / PREFECT_FILE)
    spec_parameter = _relative_to(Path(spec_path).resolve(), root)
    # All built (and so checked) before anything is registered.
    deployments = [
        _runner_deployment(entry, declaration, spec, spec_parameter, root, work_pool)
        for entry in declaration["deployments"]
    ]
    _require_server()
    _ensure_work_pool(work_pool)
    for deployment in deployments:
        deployment.apply()
    return [deployment.full_name for deployment in deployments]


def _read_declaration(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DeployError(f"{path} not found; run `attnops deploy` from the repository root")
    declaration = yaml.safe_load(path.read_text())
    if not isinstance(declaration, dict) or not declaration.get("deployments"):
        raise DeployError(f"{path} declares no deployments")
    return declaration


def prefect_server() -> tuple[str | None, str | None]:
    """(PREFECT_API_URL, why no server answers there): the reason is None when one does."""
    api_url = get_current_settings().api.url
    if not api_url:
        return None, "PREFECT_API_URL is not set"
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    return api_url, None if error is None else " ".join(str(error).split()) or type(error).__name__


def _require_server() -> None:
    """Fail fast unless a Prefect server answers: a temporary one would forget the
    deployments as soon as this process exits, and cannot run them."""
    api_url, reason = prefect_server()
    if not api_url:
        raise DeployError(
            "deployments need a running Prefect server: start one (`prefect server start`) "
            "and set PREFECT_API_URL=http://127.0.0.1:4200/api, or select a profile that has one"
        )
    if reason is not None:
        raise DeployError(
            f"no Prefect server answers at PREFECT_API_URL={api_url} ({reason}); "
            "start one with `prefect server start` or point PREFECT_API_URL at yours"
        )


def _ensure_work_pool(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return
        except ObjectNotFound:
            pass
        pool = WorkPoolCreate(
            name=name,
            type="process",
            # The process worker's own template: asking the CLI for it would look up the
            # worker collection online.
            base_job_template=ProcessWorker.get_default_base_job_template(),
        )
        with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile by someone else
            client.create_work_pool(pool)


def _runner_deployment(
    entry: dict[str, Any],
    declaration: dict[str, Any],
    spec: PipelineSpec,
    spec_parameter: str,
    root: Path,
    work_pool: str,
) -> RunnerDeployment:
    """One prefect.yaml deployment with the spec's values applied."""
    entrypoint = entry.get("entrypoint", "")
    if unknown := sorted(set(entry) - _DEPLOYMENT_KEYS):
        raise DeployError(
            f"{PREFECT_FILE}, deployment {entrypoint or entry.get('name')}: attnops deploy does "
            f"not apply {', '.join(unknown)} (it applies {', '.join(sorted(_DEPLOYMENT_KEYS))})"
        )
    try:
        flow_name, docstring, schema = read_flow(root, entrypoint)
    except FlowSourceError as exc:
        raise DeployError(f"{PREFECT_FILE}: {exc}") from None
    label = f"{flow_name}/{spec.name}"
    try:
        limit, concurrency_options = _concurrency(entry.get("concurrency_limit"))
        deployment = RunnerDeployment(
            name=spec.name,
            flow_name=flow_name,
            entrypoint=entrypoint,
            description=entry.get("description") or docstring,
            tags=entry.get("tags") or [],
            parameters={**(entry.get("parameters") or {}), "spec_path": spec_parameter},
            schedules=[_schedule(item, spec, flow_name) for item in entry.get("schedules") or []],
            concurrency_limit=limit,
            concurrency_options=concurrency_options,
            triggers=[
                _trigger(raw, spec, f"{label}: {raw.get('name') or f'trigger {i}'}")
                for i, raw in enumerate(entry.get("triggers") or [], start=1)
            ],
            storage=_PullSteps(_pull_steps(entry, declaration, root), root),
            work_pool_name=work_pool,
            work_queue_name=(entry.get("work_pool") or {}).get("work_queue_name"),
            job_variables=(entry.get("work_pool") or {}).get("job_variables") or {},
        )
    except ValidationError as exc:
        raise DeployError(f"{PREFECT_FILE}, deployment {label}: {exc}") from None
    deployment._parameter_openapi_schema = schema
    return deployment


def _concurrency(declared: int | dict | None) -> tuple[int | None, ConcurrencyOptions | None]:
    """`concurrency_limit: N` or `{limit: N, collision_strategy: ENQUEUE | CANCEL_NEW}`."""
    if not isinstance(declared, dict):
        return declared, None
    config = ConcurrencyLimitConfig(**declared)
    options = config.model_dump(exclude={"limit"}, exclude_none=True)
    return config.limit, ConcurrencyOptions(**options)


def _schedule(item: dict[str, Any], spec: PipelineSpec, flow_name: str) -> DeploymentScheduleCreate:
    item = dict(item)
    options = {key: item.pop(key) for key in ("active", "parameters", "slug") if key in item}
    if "cron" not in item:
        raise DeployError(f"{PREFECT_FILE}: only cron schedules are supported, got {item}")
    if flow_name == "monitor":
        item["cron"] = spec.monitoring.schedule_cron
    try:
        schedule = CronSchedule(**item)
    except ValidationError:
        raise DeployError(
            f"{flow_name}/{spec.name}: {item['cron']!r} is not a valid cron expression "
            "(the monitor's comes from monitoring.schedule_cron in the spec)"
        ) from None
    return DeploymentScheduleCreate(schedule=schedule, **options)


def _trigger(raw: dict[str, Any], spec: PipelineSpec, name: str) -> Any:
    raw = copy.deepcopy(raw)
    raw["name"] = name
    if "prefect.resource.id" in (raw.get("match") or {}):
        raw["match"]["prefect.resource.id"] = spec.name
    return _TRIGGER.validate_python(raw)


def _pull_steps(entry: dict[str, Any], declaration: dict[str, Any], root: Path) -> list[dict]:
    """The deployment's pull steps (else the file's), with a relative working directory
    made absolute: the worker runs flows from a temporary folder of its own."""
    steps = copy.deepcopy(entry["pull"] if "pull" in entry else declaration.get("pull") or [])
    for step in steps:
        if WORKING_DIRECTORY_STEP in step:
            directory = step[WORKING_DIRECTORY_STEP]["directory"]
            step[WORKING_DIRECTORY_STEP]["directory"] = str((root / directory).resolve())
    return steps


@dataclass
class _PullSteps:
    """Storage that only hands prefect.yaml's pull steps to RunnerDeployment: the code is
    already where the worker will look for it."""

    steps: list[dict]
    destination: Path
    pull_interval: int | None = None

    def set_base_path(self, path: Path) -> None:
        pass

    async def pull_code(self) -> None:
        pass

    def to_pull_step(self) -> list[dict]:
        return self.steps


def _relative_to(path: Path, root: Path) -> str:
    """Relative to the folder the runs work in when the spec is inside it (readable in the
    UI, and what a user would type), else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
