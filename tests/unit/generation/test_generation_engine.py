"""The generation engine's parts: admission under the KV budget, the prefix cache, and the
continuous-batching decode loop against `decode()` on a tiny random Llama."""

from __future__ import annotations

import time

import pytest
import torch

from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import decode
from attnops.models.precision import decoding_weights, native_bf16
from attnops.serving.generation_engine import GenerationEngine, RequestTimeout
from attnops.serving.generation_scheduler import KvBudget, Overloaded, Pending, Row, Scheduler
from attnops.serving.prefix_cache import PrefixCache, shared_prefix_len
from attnops.spec_generation import GenerationServingSpec, GenerationSpec

ARTICLE = "Refunds are paid within 14 days of the return reaching our warehouse."


class Sink:
    """Collects one request's events (the engine calls it on its thread)."""

    closed = False

    def __init__(self) -> None:
        self.tokens, self.done, self.error = [], None, None

    def token(self, token_id):
        self.tokens.append(token_id)

    def finish(self, finished):
        self.done = finished

    def fail(self, error):
        self.error = error

    @property
    def over(self) -> bool:
        return self.done is not None or self.error is not None


def _pending(n_prompt: int, max_new: int, *, timeout_s: float = 30.0, prefix: int = 0) -> Pending:
    return Pending(list(range(n_prompt)), prefix, max_new, time.monotonic() + timeout_s, Sink())


def _wait(sinks, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(s.over for s in sinks):
        assert time.monotonic() < deadline, "the engine did not finish in time"
        time.sleep(0.005)


def test_admission_keeps_the_worst_case_padded_cache_within_the_budget():
    """Rows x (longest row + longest remainder) must fit; the head waits, nothing overtakes."""
    scheduler = Scheduler(budget_tokens=100, max_rows=8, max_queue=8)
    big, small = _pending(30, 20), _pending(5, 5)
    scheduler.submit(big)
    scheduler.submit(small)
    assert scheduler.admit([Row(10, 10)]) == [big]  # 2 x (30 + 20) = 100
    assert scheduler.admit([Row(30, 20), Row(10, 10)]) == []  # small would make 3 x 50
    assert scheduler.admit([]) == [small]


def test_a_full_queue_or_a_request_bigger_than_the_budget_is_refused_with_a_sentence():
    scheduler = Scheduler(budget_tokens=100, max_rows=2, max_queue=1)
    with pytest.raises(Overloaded, match="kv_budget_mb"):
        scheduler.submit(_pending(90, 20))
    scheduler.submit(_pending(10, 10))
    with pytest.raises(Overloaded, match="max_queue 1"):
        scheduler.submit(_pending(10, 10))


def test_champion_and_canary_engines_share_one_kv_budget_and_take_turns():
    """Each admits only beside the other's reservation; one waiting for room stops the
    other admitting until it got in, so neither queue starves the other."""
    shared = KvBudget()
    champion, canary = (
        Scheduler(budget_tokens=100, max_rows=8, max_queue=8, shared=shared, bytes_per_token=2)
        for _ in range(2)
    )
    first, second, third = _pending(30, 20), _pending(30, 20), _pending(5, 5)
    champion.submit(first)
    assert champion.admit([]) == [first]  # reserves 1 x 50 tokens = 100 bytes
    canary.submit(second)
    assert canary.admit([]) == [second]  # 50 + 50 = the whole budget
    champion.submit(third)
    assert champion.admit([Row(30, 20)]) == []  # no room beside the canary's rows
    canary.submit(_pending(5, 5))
    assert canary.admit([]) == []  # room now, but the champion waits first
    assert champion.admit([Row(30, 20)]) == [third]  # 2 x 50: the whole budget again
    assert canary.admit([]) == []  # waits for the champion's rows
    assert champion.admit([]) == []  # they finished: the reservation shrinks
    assert len(canary.admit([])) == 1
    shared.release(canary)  # a stopped engine frees its reservation
    assert shared.others(champion) == (0, False)


def test_rows_are_capped_and_expired_requests_leave_the_queue():
    scheduler = Scheduler(budget_tokens=10_000, max_rows=2, max_queue=8)
    late = _pending(5, 5, timeout_s=-1)
    fresh = [_pending(5, 5) for _ in range(3)]
    for request in (late, *fresh):
        scheduler.submit(request)
    assert scheduler.expire(time.monotonic()) == [late]
    assert scheduler.admit([]) == fresh[:2]
    assert len(scheduler) == 1


def _kv(tokens: int) -> tuple:
    t = torch.zeros(1, 1, tokens, 64)  # 256 bytes per token per tensor
    return ((t, t),)


def test_prefix_cache_drops_the_least_recently_used_within_its_budget():
    cache = PrefixCache(budget_mb=2048 * 512 / 2**20).view()  # room for 2048 tokens of _kv
    cache.put([1], _kv(1024))
    cache.put([2], _kv(512))
    assert cache.get([1]) is not None  # [2] is now the least recently used
    cache.put([3], _kv(1024))
    assert cache.get([2]) is None and cache.get([1]) is not None and cache.get([3]) is not None
    assert cache.bytes == 2 * 1024 * 512
    assert not cache.put([4], _kv(4096))  # larger than the whole budget: not kept
    assert (cache.hits, cache.misses) == (3, 1) and cache.hit_rate == 0.75


def test_champion_and_canary_share_one_prefix_budget_but_never_each_others_states():
    """`prefix_cache_mb` bounds the server's prefix caches together; the same tokens under
    another version's weights are another entry."""
    shared = PrefixCache(budget_mb=2048 * 512 / 2**20)  # room for 2048 tokens of _kv
    champion, canary = shared.view(), shared.view()
    champion.put([1], _kv(1024))
    champion.put([2], _kv(512))
    assert canary.get([1]) is None  # the champion's states of the same prefix
    canary.put([1], _kv(1024))  # drops the champion's least recently used entry
    assert shared.bytes == champion.bytes + canary.bytes <= shared.budget_bytes
    assert champion.get([1]) is None and champion.get([2]) is not None
    assert canary.get([1]) is not None
    canary.clear()  # the canary's engine stopped: its room goes back to the champion
    assert (canary.bytes, shared.bytes) == (0, champion.bytes)
    assert champion.put([3], _kv(1024)) and champion.get([2]) is not None


def test_the_shared_prefix_is_the_same_for_every_message_on_one_article(tokenizer):
    spec = GenerationSpec()
    prompts = [prompt_ids(tokenizer, spec, s, ARTICLE) for s in ("Hi", "Where is my refund?")]
    lengths = [shared_prefix_len(tokenizer, spec, ARTICLE, p) for p in prompts]
    assert lengths[0] == lengths[1] > 20
    assert prompts[0][: lengths[0]] == prompts[1][: lengths[1]]
    bare = prompt_ids(tokenizer, spec, "Hi", "")
    assert 0 < shared_prefix_len(tokenizer, spec, "", bare) < len(bare)


@pytest.fixture
def engine_for(tiny_llama, tokenizer):
    engines = []

    def make(**limits) -> GenerationEngine:
        engine = GenerationEngine(
            tiny_llama, tokenizer, GenerationServingSpec(**limits), device="cpu"
        )
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def _requests(tokenizer, sources, contexts, max_new):
    spec = GenerationSpec()
    out = []
    for source, context, n in zip(sources, contexts, max_new, strict=True):
        ids = prompt_ids(tokenizer, spec, source, context)
        prefix = shared_prefix_len(tokenizer, spec, context, ids)
        out.append(Pending(ids, prefix, n, time.monotonic() + 30, Sink()))
    return out


def test_continuous_batching_writes_what_decode_writes_for_each_prompt(
    engine_for, tiny_llama, tokenizer
):
    """Requests of different lengths joining a running batch, with prefix-cache hits, each
    get the greedy tokens of `decode()` on their prompt alone."""
    sources = ["Where is my refund?", "I returned shoes, order 1234; nothing yet.", "hi", "ok"]
    contexts = [ARTICLE, ARTICLE, ARTICLE, ""]
    max_new = [24, 5, 16, 24]
    requests = _requests(tokenizer, sources, contexts, max_new)
    engine = engine_for()
    for request in requests:
        engine.submit(request)
        time.sleep(0.002)  # arrive while the earlier ones decode
    _wait([r.sink for r in requests])
    expected = decode(
        tiny_llama,
        tokenizer,
        [r.prompt_ids for r in requests],
        max_new_tokens=24,
        device="cpu",
        signals=False,
        batch_size=1,
    )
    for request, reference, n in zip(requests, expected, max_new, strict=True):
        sink = request.sink
        assert sink.error is None
        assert sink.done.token_ids == reference.token_ids[:n] == sink.tokens
    assert [r.sink.done.prefix_hit for r in requests] == [False, True, True, False]
    assert engine.prefix_cache.hits == 2
    assert engine.running == 0 and engine.kv_bytes_in_use == engine.prefix_cache.bytes


def test_a_request_past_its_timeout_fails_and_frees_its_row(engine_for, tokenizer):
    engine = engine_for(request_timeout_s=0.05)
    (slow,) = _requests(tokenizer, ["Tell me a long story"], [""], [1000])
    slow.deadline = time.monotonic() + 0.05
    engine.submit(slow)
    _wait([slow.sink])
    assert isinstance(slow.sink.error, RequestTimeout)
    assert engine.running == 0


def test_fp32_decoding_runs_the_served_weights_themselves(tiny_llama):
    """No second copy of the weights unless bf16 is asked for."""
    assert decoding_weights(tiny_llama, torch.device("cpu"), False) is tiny_llama


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_decoding_writes_what_decode_writes_with_the_copy_in_half_the_kv_bytes(
    tiny_llama, tokenizer
):
    """`generation.serving.bf16`: the engine decodes a bf16 copy, counts its KV cache at 2
    bytes per element, and leaves the fp32 weights (the scorer's) as they were."""
    copy16 = decoding_weights(tiny_llama, torch.device("cpu"), True)
    assert copy16.dtype == torch.bfloat16 and tiny_llama.dtype == torch.float32
    fp32 = GenerationEngine(tiny_llama, tokenizer, GenerationServingSpec(), device="cpu")
    engine = GenerationEngine(copy16, tokenizer, GenerationServingSpec(bf16=True), device="cpu")
    engine.start()
    try:
        assert (engine.precision, fp32.precision) == ("bfloat16", "float32")
        assert 2 * engine.bytes_per_token == fp32.bytes_per_token
        (request,) = _requests(tokenizer, ["Where is my refund?"], [ARTICLE], [16])
        engine.submit(request)
        _wait([request.sink])
        (expected,) = decode(
            copy16, tokenizer, [request.prompt_ids], max_new_tokens=16, device="cpu",
            signals=False, batch_size=1,
        )  # fmt: skip
        assert request.sink.error is None
        assert request.sink.done.token_ids == expected.token_ids
        # The cached prefix is held in bf16: its bytes are what the budget counts per token.
        assert engine.prefix_cache.bytes == request.prefix_len * engine.bytes_per_token > 0
    finally:
        engine.stop()
