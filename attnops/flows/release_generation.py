"""The `release` flow's observation for `task: generation` versions (see `flows.release`).

Classification waits for the canary window, then decides once. A generative reply is
scored by the hallucination detector after it was sent, so the newest replies of a full
window may not be judged yet: the decision itself says when to keep observing (too few
requests, or too few scored replies), and the window is read and judged again until it
says promote or roll back, or `release.timeout_s` runs out.
"""

from __future__ import annotations

import time

from attnops.flows.tasks import io_task
from attnops.models import aliases
from attnops.monitors.canary_generation import GenerationCanaryDecision, compare_generation_canary
from attnops.settings import Settings
from attnops.spec import PipelineSpec

POLL_S = 2.0
"""Between two reads of the log: each reads both windows and bootstraps three ratios."""


@io_task
def observe_generation(
    spec: PipelineSpec, settings: Settings, version: str, champion: str, since_ts: float
) -> tuple[GenerationCanaryDecision, str]:
    """Judge the canary's replies against the champion's since `since_ts` until decided.

    Returns:
        The last decision, and its reason (saying the window did not fill when it still
        asked to keep observing at the deadline: that is a roll back).
    """
    from attnops.serving.generation_log_reader import GenerationLogReader

    log = GenerationLogReader(settings.inference_db)
    deadline = time.monotonic() + spec.release.timeout_s
    # Newest rows, a margin above the window: unscored and failed rows do not count in full.
    limit = 20 * spec.release.canary_window
    while True:
        canary = log.window(version=version, route=aliases.CANARY, since_ts=since_ts, limit=limit)
        base = log.window(version=champion, route=aliases.CHAMPION, since_ts=since_ts, limit=limit)
        decision = compare_generation_canary(
            canary, base, spec, canary_version=version, champion_version=champion
        )
        if not decision.keep_observing or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if decision.keep_observing:
        return decision, (
            f"the canary window did not fill within {spec.release.timeout_s:g} s: "
            f"{decision.reasons()}"
        )
    return decision, decision.reasons()
