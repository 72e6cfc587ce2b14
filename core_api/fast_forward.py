"""Decode fast-forward: the simulator applies a run of identical decode steps in one go.

Pure decode steps of an unchanged batch differ only in context length, so a simulator can
compute their durations and apply all of them at once; the result (tokens, timestamps, pages)
is exactly what stepping each would give. This is what keeps a simulation's cost proportional
to scheduling changes rather than to tokens. It works on the scheduler's state through its
methods (Scheduler.decode_run_length / apply_decode_run call it).
"""
from __future__ import annotations

from core_api.batch import Batch, ScheduleOutput, StepResult
from core_api.scheduler_state import SchedulerState
from core_api.sequence import FINISHED, RUNNING


def decode_run_length(state: SchedulerState, eos: int | None, batch: Batch, out: ScheduleOutput) -> int:
    """How many identical pure-decode steps follow from this batch, if nothing outside
    interrupts: the batch holds every running sequence, each decodes one token, none can stop
    early (no stop tokens), and the pages all of them will need fit. Then the next steps differ
    only in context length, and the simulator may apply them in one go (`apply_decode_run`)
    instead of stepping each; 1 means step normally. Nothing may wait: stepping would try to admit
    it at every step, and what it finds (free pages, the prefix cache as decoding evicts) can let it
    in mid-run, which a run applied in one go would miss (tests/test_sim_fast_paths.py)."""
    seqs = batch.seqs
    if (out.admitted_receives or out.preempted or state.waiting or len(seqs) != len(state.running)
            or batch.features.decode_seqs != len(seqs) or not seqs):
        return 1
    k = min(s.req.sampling.max_tokens - len(s.output) for s in seqs)
    if k <= 1:
        return 1
    for s in seqs:
        sp = s.req.sampling
        if sp.stop_token_ids or (eos is not None and not sp.ignore_eos):
            return 1
    # The batch's own pages for step 1 are already allocated; steps 2..k need the rest.
    kv = state.kv
    extra = sum(kv.pages_for(s.num_computed + k) - len(s.pages) for s in seqs)
    return k if extra <= kv.num_available else 1


def apply_decode_run(state: SchedulerState, batch: Batch, times: list[float]) -> StepResult:
    """Apply len(times) decode steps of `batch` at once (token id 0, as `update` with None)."""
    k = len(times)
    result = StepResult([], [], [])
    zeros = [0] * k
    kv = state.kv
    running = [seq for seq in batch.seqs if seq.status == RUNNING]
    # Every step's pages before any sequence finishes: stepping takes them at each step's start,
    # and releases a finished sequence's pages only at the end of its last step.
    for seq in running:
        need = kv.pages_for(seq.num_computed + k) - len(seq.pages)
        if need > 0:
            state.grow(seq, need)
    for seq in running:
        seq.num_computed += k  # decoding: no prefill left, queued_prefill_tokens unchanged
        seq.output += zeros
        seq.token_times += times
        result.sampled.append(seq)
        if len(seq.output) >= seq.req.sampling.max_tokens:
            seq.finish_reason = "length"
            state.finish(seq, FINISHED)
            result.finished.append(seq)
    return result
