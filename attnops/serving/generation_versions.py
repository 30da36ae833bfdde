"""The generative versions being served: champion and canary, each with its own decode engine.

A reload reads the `champion` and `canary` aliases and loads what changed beside what is
served (`prepare`, blocking, off the event loop), then swaps the new set in with one
assignment on the event loop (`swap`). Requests take their version with `acquire` and give
it back with `release`, both on the event loop too, so a request never straddles a swap: it
finishes on the version it started with. A version no longer served is retired: its engine
stops once its last request is done, none is dropped. A version whose weights or tokenizer
do not hash to their tags is never loaded (`load_version`), and nothing is swapped.

The engines draw on one KV budget (`KvBudget`) and one prefix cache (`PrefixCache`, a view
per engine), and the scorer gets each version's eager twin and registered hallucination
detector (`ScoringModel`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from attnops.models import registry
from attnops.models.aliases import CANARY, CHAMPION, resolve
from attnops.models.precision import decoding_weights
from attnops.serving.generation_engine import GenerationEngine
from attnops.serving.generation_scheduler import KvBudget
from attnops.serving.generation_scoring import GenerationScorer, ScoringModel
from attnops.serving.generation_stream import Reply, load_generator
from attnops.serving.prefix_cache import PrefixCache
from attnops.settings import Settings
from attnops.spec import PipelineSpec

ROUTES = (CHAMPION, CANARY)


@dataclass(eq=False)
class ServedGenerator:
    """One loaded version: request preparation, its decode engine, its scoring twin."""

    reply: Reply
    engine: GenerationEngine
    scoring: ScoringModel
    in_flight: int = 0
    retired: bool = False

    @property
    def version(self) -> str:
        return self.reply.version


class GenerationVersions:
    """The served set, swapped whole on reload.

    Args:
        on_step: the engines' per-step callback (metrics).
        scorer: told which versions are served (it keeps a retired one's twin until its
            queued outputs are scored).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        settings: Settings,
        scratch: Path,
        *,
        on_step,
        scorer: GenerationScorer,
    ) -> None:
        self.spec, self.settings, self.scratch = spec, settings, scratch
        self.on_step, self.scorer = on_step, scorer
        self.budget = KvBudget()
        self.prefix_cache = PrefixCache(spec.generation.serving.prefix_cache_mb)
        self.slots: dict[str, ServedGenerator] = {}
        self._retired: list[ServedGenerator] = []

    def routes(self) -> dict[str, str | None]:
        """route -> version served on it (None: no canary)."""
        slots = self.slots
        return {route: slots[route].version if route in slots else None for route in ROUTES}

    def engines(self) -> list[GenerationEngine]:
        """Every running engine, retiring ones included."""
        served = list({id(s): s for s in self.slots.values()}.values())
        return [s.engine for s in served + self._retired]

    def load_now(self) -> dict[str, float]:
        """What the engines hold now, summed: the gauges of `GenerationMetrics.refresh`."""
        engines = self.engines()
        caches = [e.prefix_cache for e in engines]
        lookups = sum(c.hits + c.misses for c in caches)
        return {
            "queue": sum(len(e.scheduler) for e in engines),
            "rows": sum(e.running for e in engines),
            "max_rows": sum(e.max_rows for e in engines),
            "kv_bytes": sum(e.kv_bytes_in_use for e in engines),
            "hit_rate": sum(c.hits for c in caches) / lookups if lookups else 0.0,
        }

    def prepare(self) -> dict[str, ServedGenerator]:
        """Read the aliases and load (and start) the versions not served yet (blocking).

        Raises:
            LookupError: there is no champion.
            ValueError: a version's weights or tokenizer do not match its tags, or it was
                registered to sample; whatever this call loaded is stopped again.
        """
        client = registry.client_for(self.settings)
        name = self.spec.name
        fresh: dict[str, ServedGenerator] = {}
        loaded: list[ServedGenerator] = []
        try:
            for route in ROUTES:
                mv = resolve(client, name, route)
                if mv is None:
                    if route == CHAMPION:
                        raise LookupError(
                            f"model '{name}' has no champion; promote a version first "
                            "(attnops release, or the demo)"
                        )
                    continue
                version = str(mv.version)
                known = [*self.slots.values(), *fresh.values()]
                same = next((s for s in known if s.version == version), None)
                if same is None:
                    same = self._load(client, version)
                    loaded.append(same)
                fresh[route] = same
        except Exception:
            for slot in loaded:
                slot.engine.stop()
            raise
        return fresh

    def swap(self, fresh: dict[str, ServedGenerator]) -> list[ServedGenerator]:
        """Serve `fresh` from now on (event loop); returns retired versions already idle."""
        before = {id(s): s for s in self.slots.values()}
        self.slots = fresh  # one assignment: a request sees the old set or the new one
        self.scorer.serve([s.scoring for s in fresh.values()])
        kept = {id(s) for s in fresh.values()}
        for key, slot in before.items():
            if key not in kept:
                slot.retired = True
                self._retired.append(slot)
        return self._idle()

    def acquire(self, route: str) -> ServedGenerator:
        """The version serving `route` (the champion when no canary), held until `release`."""
        slot = self.slots.get(route) or self.slots[CHAMPION]
        slot.in_flight += 1
        return slot

    def release(self, slot: ServedGenerator) -> list[ServedGenerator]:
        """A request is done with `slot`; returns retired versions now idle (to stop)."""
        slot.in_flight -= 1
        return self._idle() if slot.retired else []

    def _idle(self) -> list[ServedGenerator]:
        idle = [s for s in self._retired if s.in_flight == 0]
        self._retired = [s for s in self._retired if s.in_flight > 0]
        return idle

    def stop_all(self) -> None:
        """Stop every engine (shutdown; blocking)."""
        for engine in self.engines():
            engine.stop()

    def _load(self, client, version: str) -> ServedGenerator:
        reply, evidence = load_generator(client, self.spec, version, self.scratch)
        scoring = ScoringModel.for_version(
            version, reply.model, reply.tokenizer, reply.device, evidence, name=self.spec.name
        )
        limits = self.spec.generation.serving
        # The engine may decode a bf16 copy; the scorer keeps the weights evaluation scored with.
        engine = GenerationEngine(
            decoding_weights(reply.model, reply.device, limits.bf16),
            reply.tokenizer,
            limits,
            device=reply.device,
            threads=reply.threads,
            on_step=self.on_step,
            budget=self.budget,
            prefix_cache=self.prefix_cache.view(),
        )
        engine.start()
        return ServedGenerator(reply, engine, scoring)


async def stop_engines(slots: list[ServedGenerator]) -> None:
    """Stop retired versions' engines off the event loop (they are idle: nothing fails)."""
    for slot in slots:
        await asyncio.to_thread(slot.engine.stop)
