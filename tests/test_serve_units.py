"""The serve pieces that need no server: incremental detokenizing with stop strings, the
Prometheus text, the OpenAI error shape of validation errors, and the CLI/config merge."""
from __future__ import annotations

import argparse

import pytest

from real.serve.detokenizer import TextStream
from real.tokenizer import ByteTokenizer

TEXTS = ["plain ascii", "naïve café ✓ 日本語 🙂", "\u00e9" * 5, "mixed 🙂a🙂b"]


def chunks_of(ids: list[int], sizes: tuple[int, ...]) -> list[list[int]]:
    out, i, k = [], 0, 0
    while i < len(ids):
        n = sizes[k % len(sizes)]
        out.append(ids[i:i + n])
        i, k = i + n, k + 1
    return out


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("sizes", [(1,), (2, 1, 3), (5,)])
def test_streamed_text_equals_whole_decode(text, sizes):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    stream = TextStream(tok)
    pieces = [stream.push(c) for c in chunks_of(ids, sizes)]
    pieces.append(stream.flush())
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # never a half character on the wire


def test_invalid_bytes_stream_like_whole_decode():
    tok = ByteTokenizer()
    ids = [0xE2, 0x82, 65, 0xFF, 0xC3, 66, 0xF0, 0x9F, 0x99]  # truncated, invalid, and a dangling tail
    stream = TextStream(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids)


@pytest.mark.parametrize("sizes", [(1,), (3,), (100,)])
def test_stop_string_is_cut_and_never_shown(sizes):
    tok = ByteTokenizer()
    ids = tok.encode("one two STOP three")
    stream = TextStream(tok, stop=["STOP", "zzz"])
    shown = ""
    for c in chunks_of(ids, sizes):
        shown += stream.push(c)
        assert "S" not in shown  # held back while it might start a stop string
        if stream.stopped:
            break
    assert stream.stopped and shown + stream.flush() == "one two "


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    tok = ByteTokenizer()
    stream = TextStream(tok, stop=["END"])
    assert stream.push(tok.encode("abc E")) == "abc "
    assert stream.push(tok.encode("N")) == ""
    assert stream.push(tok.encode("X")) == "ENX"
    assert stream.flush() == "" and not stream.stopped


def _args(**over) -> argparse.Namespace:
    from real import serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    argv = ["serve"]
    for k, v in over.items():
        argv += [f"--{k.replace('_', '-')}", str(v)] if not isinstance(v, list) else \
            [x for item in v for x in (f"--{k}", item)]
    return parser.parse_args(argv)


def test_cli_flags_and_env_token(monkeypatch):
    from real import serve_cli

    monkeypatch.delenv("MICROSERVING_ADMIN_TOKEN", raising=False)
    cluster, serve = serve_cli.build_configs(_args(engines=3, strategy="balanced_pd", param=["ratio=0.3"], port=0))
    assert [e for e, _ in cluster.expanded()] == ["e0", "e1", "e2"]
    assert cluster.strategy.name == "balanced_pd" and cluster.strategy.params == {"ratio": 0.3}
    assert serve.host == "127.0.0.1" and serve.port == 0 and serve.admin_token is None
    monkeypatch.setenv("MICROSERVING_ADMIN_TOKEN", "from-env")
    assert serve_cli.build_configs(_args())[1].admin_token == "from-env"
    assert serve_cli.build_configs(_args(admin_token="flag"))[1].admin_token == "flag"
    assert "from-env" not in repr(serve_cli.build_configs(_args())[1])  # the token never shows in logs


def test_serve_file(tmp_path, monkeypatch):
    from real import serve_cli

    monkeypatch.delenv("MICROSERVING_ADMIN_TOKEN", raising=False)
    path = tmp_path / "cluster.yaml"
    path.write_text("engines:\n  - {count: 2, model: tiny, num_pages: 128}\nstrategy: {name: pd}\n"
                    "serve: {port: 9001, max_concurrent: 7}\n")
    cluster, serve = serve_cli.build_configs(_args(config=path, max_concurrent=3))
    assert cluster.strategy.name == "pd" and len(cluster.expanded()) == 2
    assert serve.port == 9001 and serve.max_concurrent == 3  # flags win over the file
    path.write_text("cluster:\n  engines: [{address: 'tcp://127.0.0.1:5555'}]\nserve: {bogus: 1}\n")
    with pytest.raises(ValueError):
        serve_cli.build_configs(_args(config=path))
