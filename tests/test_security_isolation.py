"""One request fails only itself: a tiny temperature, NaN logits or a forward pass that raises
for one sequence end that sequence alone; its batch-mates keep going with unchanged tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core_api.types import MIN_TEMPERATURE, SamplingParams
from real import protocol as p
from real.reference import greedy_generate
from tests.inproc_engine import InProcEngine

POISON = 7  # a token id the tests make the model choke on


@pytest.fixture
def engine():
    eng = InProcEngine(max_num_batched_tokens=512)
    yield eng
    eng.close()


def _prompts(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 256, 12 + 5 * i, dtype=np.int32) for i in range(n)]


def _generate_all(engine: InProcEngine, prompts: list[np.ndarray], sampling: list[dict]):
    """start_generate all prompts at once (one batch) and collect tokens and errors per call."""
    calls = {}
    for i, (prompt, sp) in enumerate(zip(prompts, sampling)):
        wire = p.WireRequest(id=f"r{i}", prompt=prompt.astype("<i4").tobytes(), sampling=p.WireSampling(**sp))
        calls[engine.send(p.StartGenerate(op="start_generate", id=0, req=wire))] = f"r{i}"
    tokens = {r: [] for r in calls.values()}
    errors: dict[str, str] = {}
    finished: set[str] = set()

    def done(answers):
        for m in answers[len(seen):]:
            seen.append(m)
            if isinstance(m, p.Chunks):
                for cid, tok in zip(m.ids, m.tokens):
                    tokens[calls[cid]].append(tok)
                finished.update(calls[c] for c in m.finished)
            elif isinstance(m, p.Error) and m.id in calls:
                errors[calls[m.id]] = m.error
        return len(finished) + len(errors) == len(calls)

    seen: list = []
    engine.answers(wait_s=30, until=done)
    return tokens, errors


def test_a_tiny_temperature_is_greedy_not_a_batch_failure(engine):
    """The attack: temperature 1e-40 used to overflow the logits, NaN the softmax and fail every
    sequence in the step. Below the floor sampling is greedy, and nobody fails."""
    assert SamplingParams(temperature=1e-40).greedy and not SamplingParams(temperature=2 * MIN_TEMPERATURE).greedy
    prompts = _prompts(4)
    sampling = [{"max_tokens": 6, "ignore_eos": True, "temperature": 1e-40}] + [
        {"max_tokens": 6, "ignore_eos": True}] * 3
    tokens, errors = _generate_all(engine, prompts, sampling)
    assert not errors
    model = engine.worker.model
    for i, prompt in enumerate(prompts):
        assert tokens[f"r{i}"] == greedy_generate(model, prompt.tolist(), 6)
    engine.worker.sched.kv.check_no_leaks()


def test_nan_logits_fail_only_their_sequence(engine):
    """A poisoned embedding row makes one prompt's logits NaN: that request fails with a reason
    that says so; the three others in its batch finish with the tokens they get alone."""
    model = engine.worker.model
    reference = [greedy_generate(model, pr.tolist(), 5) for pr in _prompts(4)]
    with torch.no_grad():
        model.embed[POISON] = float("nan")
    prompts = _prompts(4)
    prompts[1][3] = POISON
    tokens, errors = _generate_all(engine, prompts, [{"max_tokens": 5, "ignore_eos": True}] * 4)
    assert set(errors) == {"r1"} and "non-finite logits" in errors["r1"], errors
    for i in (0, 2, 3):
        assert tokens[f"r{i}"] == reference[i]
    engine.worker.sched.kv.check_no_leaks()


def test_an_exception_for_one_sequence_fails_it_alone(engine, monkeypatch):
    """A forward pass that raises whenever one request's token is in the batch: the engine runs
    the batch again sequence by sequence, fails only that request, and the others are unharmed."""
    model = engine.worker.model
    prompts = _prompts(4, seed=1)
    reference = {i: greedy_generate(model, pr.tolist(), 5) for i, pr in enumerate(prompts)}
    prompts[2][0] = POISON
    forward = type(model).forward

    def choking_forward(self, input_ids, *args, **kwargs):
        if bool((input_ids == POISON).any()):
            raise RuntimeError("kernel failed for a poisoned input")
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", choking_forward)
    tokens, errors = _generate_all(engine, prompts, [{"max_tokens": 5, "ignore_eos": True}] * 4)
    assert set(errors) == {"r2"} and "kernel failed for a poisoned input" in errors["r2"], errors
    for i in (0, 1, 3):
        assert tokens[f"r{i}"] == reference[i]
    engine.worker.sched.kv.check_no_leaks()


@pytest.mark.parametrize("bad", [{"temperature": float("nan")}, {"temperature": float("inf")},
                                 {"top_p": float("nan")}])
def test_non_finite_sampling_values_are_refused_at_the_socket(engine, bad):
    wire = {"id": "x", "prompt": [1, 2, 3], "sampling": {"max_tokens": 2, **bad}}
    raw = p.msgpack.packb({"op": "start_generate", "id": 5, "req": wire})
    engine.client.send(raw)
    (answer,) = engine.answers()
    assert isinstance(answer, p.Error) and answer.kind == "ProtocolError" and answer.id == 5
