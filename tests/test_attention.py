"""Paged attention: metadata layout, CPU reference vs dense causal attention, batch
invariance of the row-wise ops, and (gpu marker) flashinfer vs the torch reference."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from real.attention import TorchPagedAttention, build_metadata, gather_kv, make_attention, write_kv
from real.batch_invariant import linear, rms_norm, silu_mul

H, HKV, D = 4, 2, 16


def test_metadata_layout():
    meta = build_metadata([(3, 10, [7, 2, 5, 9], True), (1, 4, [1], False), (2, 2, [3], True)], page_size=4)
    assert meta.qo_indptr.tolist() == [0, 3, 4, 6]
    assert meta.kv_page_indptr.tolist() == [0, 3, 4, 5]  # 10 tokens -> 3 pages, extra id 9 ignored
    assert meta.kv_page_indices.tolist() == [7, 2, 5, 1, 3]
    assert meta.kv_last_page_len.tolist() == [2, 4, 2]
    assert meta.positions.tolist() == [7, 8, 9, 3, 0, 1]
    assert meta.slot_page.tolist() == [2, 5, 5, 1, 3, 3]
    assert meta.slot_offset.tolist() == [3, 0, 1, 3, 0, 1]
    assert meta.sample_rows.tolist() == [2, 5]
    assert (meta.num_seqs, meta.num_tokens, meta.num_samples, meta.all_decode) == (3, 6, 2, False)
    assert meta.qo_indptr.dtype == torch.int32 and meta.slot_page.dtype == torch.int64


@pytest.mark.parametrize("bad", [(0, 3, [0], True), (4, 3, [0], True), (2, 9, [0, 1], True)])
def test_metadata_rejects_bad_sequences(bad):
    with pytest.raises(ValueError):
        build_metadata([bad], page_size=4)


def dense_causal(q, k, v):
    """Reference: q [n, H, D] are the last n positions of k, v [L, HKV, D]."""
    n, length = q.shape[0], k.shape[0]
    k = k.repeat_interleave(H // HKV, dim=1)
    v = v.repeat_interleave(H // HKV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(D)
    allowed = torch.arange(length)[None, :] <= (length - n + torch.arange(n))[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).float()


def random_batch(seqs, page_size, num_pages=64, seed=0):
    """Random K/V written through write_kv into shuffled pages; returns q, pool layer, meta,
    and each sequence's contiguous K/V for the dense reference."""
    g = torch.Generator().manual_seed(seed)
    free = torch.randperm(num_pages, generator=g).tolist()
    specs, dense = [], []
    layer = torch.zeros(num_pages, 2, page_size, HKV, D)
    for n_new, ctx in seqs:
        pages = [free.pop() for _ in range(-(-ctx // page_size))]
        specs.append((n_new, ctx, pages, True))
        k, v = torch.randn(ctx, HKV, D, generator=g), torch.randn(ctx, HKV, D, generator=g)
        full = build_metadata([(ctx, ctx, pages, False)], page_size)
        write_kv(layer, k, v, full)
        dense.append((k, v))
    meta = build_metadata(specs, page_size)
    q = torch.randn(meta.num_tokens, H, D, generator=g)
    return q, layer, meta, dense


@pytest.mark.parametrize("invariant", [False, True])
@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_paged_attention_matches_dense(invariant, page_size):
    seqs = [(5, 5), (1, 9), (3, 17), (1, 1), (7, 20)]  # prefill, decode, chunk after cached prefix
    q, layer, meta, dense = random_batch(seqs, page_size)
    out = TorchPagedAttention(H, HKV, D, invariant=invariant)(q, layer, meta)
    row = 0
    for (n, _), (k, v) in zip(seqs, dense):
        torch.testing.assert_close(out[row:row + n], dense_causal(q[row:row + n], k, v), rtol=1e-5, atol=1e-5)
        row += n


def test_write_then_gather_roundtrip():
    _q, layer, meta, dense = random_batch([(4, 6), (2, 11)], page_size=4)
    for i, (k, v) in enumerate(dense):
        gk, gv = gather_kv(layer, meta, i)
        assert torch.equal(gk, k) and torch.equal(gv, v)


def test_invariant_attention_row_independent_of_batch_and_chunk():
    """Query at position 12 of a sequence: alone (1-token step), as part of a 13-token
    prefill, and in a batch with other sequences: identical bits."""
    q, layer, meta, _dense = random_batch([(13, 13), (3, 8), (1, 30)], page_size=4)
    attn = TorchPagedAttention(H, HKV, D, invariant=True)
    batched = attn(q, layer, meta)[12]
    pages = meta.kv_page_indices[:4].tolist()
    alone = attn(q[12:13], layer, build_metadata([(1, 13, pages, True)], 4))[0]
    chunk = attn(q[10:13], layer, build_metadata([(3, 13, pages, True)], 4))[2]
    assert torch.equal(batched, alone) and torch.equal(batched, chunk)


def test_invariant_linear_fixes_plain_gemm():
    """Why the mode exists: a row's plain GEMM result changes with the batch size (batch of
    1 vs 7 on this CPU); the invariant linear gives the same bits in both."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(128, 64, generator=g), torch.randn(7, 64, generator=g)
    assert torch.equal(linear(x[:1], w, invariant=True)[0], linear(x, w, invariant=True)[0])
    if torch.equal(F.linear(x[:1], w)[0], F.linear(x, w)[0]):
        pytest.skip("this platform's GEMM happens to be batch-invariant for this shape")


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (576, 1536), (1536, 576)])
def test_invariant_ops_row_independent(shape):
    fan_in, fan_out = shape
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(fan_out, fan_in, generator=g), torch.randn(40, fan_in, generator=g)
    alone = linear(x[3:4].clone(), w, invariant=True)[0]
    for batch, row in [(x[:7], 3), (x[3:], 0), (x, 3), (x[1:34].clone(), 2)]:
        assert torch.equal(linear(batch, w, invariant=True)[row], alone)
    y = torch.randn(40, fan_out, generator=g)
    act = silu_mul(y[5:6].clone(), y[5:6].clone(), True)[0]
    assert torch.equal(silu_mul(y[:37], y[:37], True)[5], act)
    norm = rms_norm(x[3:4].clone(), torch.ones(fan_in), 1e-5)[0]
    assert torch.equal(rms_norm(x[:29], torch.ones(fan_in), 1e-5)[3], norm)


def test_cpu_picks_torch_path_without_importing_flashinfer():
    code = ("import sys, torch; from real.attention import make_attention, TorchPagedAttention;"
            "a = make_attention(4, 2, 64, 'cpu', torch.float32);"
            "assert isinstance(a, TorchPagedAttention); assert 'flashinfer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("seqs", [[(5, 5), (3, 40), (9, 70)], [(1, 9), (1, 33), (1, 64)]])
def test_flashinfer_matches_torch_reference(seqs):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("flashinfer")
    from real.flashinfer_attention import FlashInferAttention

    heads, kv_heads, dim, page_size = 8, 2, 128, 16
    g = torch.Generator(device="cuda").manual_seed(0)
    num_pages = 32
    layer = torch.randn(num_pages, 2, page_size, kv_heads, dim, generator=g, device="cuda").to(torch.bfloat16)
    perm = torch.randperm(num_pages, device="cpu").tolist()
    specs = []
    for n, ctx in seqs:
        specs.append((n, ctx, [perm.pop() for _ in range(-(-ctx // page_size))], True))
    meta = build_metadata(specs, page_size, "cuda")
    q = torch.randn(meta.num_tokens, heads, dim, generator=g, device="cuda").to(torch.bfloat16)
    fi = make_attention(heads, kv_heads, dim, "cuda", torch.bfloat16)
    assert isinstance(fi, FlashInferAttention)
    fi.plan(meta)
    ref = TorchPagedAttention(heads, kv_heads, dim)
    torch.testing.assert_close(fi(q, layer, meta).float(), ref(q, layer, meta).float(), rtol=2e-2, atol=2e-2)
