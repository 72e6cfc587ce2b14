"""Model specs from Hugging Face config.json files, and GPUs by the names drivers report."""
from __future__ import annotations

import json

import pytest

from sim.cost_model import RooflineCostModel
from sim.hardware import MODEL_PRESETS, get_model, gpu_for_device
from sim.hf_config import HFConfigError, load_hf_config
from sim.model_names import says_fp8

LLAMA3_8B = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
             "max_position_embeddings": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
QWEN3_32B = {"model_type": "qwen3", "num_hidden_layers": 64, "hidden_size": 5120, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 25600, "vocab_size": 151936,
             "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def write(tmp_path, name, config):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("config,preset", [(LLAMA3_8B, "Llama-3.1-8B"), (QWEN3_32B, "Qwen3-32B")])
def test_config_json_gives_the_same_shape_as_the_preset(tmp_path, config, preset):
    spec = load_hf_config(write(tmp_path, preset, config))
    assert spec.name == preset
    assert spec.model_dump(exclude={"name"}) == MODEL_PRESETS[preset].model_dump(exclude={"name"})
    # A path is accepted wherever a model is named, and prices like the preset.
    by_path = get_model(str(tmp_path / preset / "config.json"))
    assert RooflineCostModel("H100-SXM", by_path).describe()["model"] == preset


def test_qwen3_head_dim_and_qk_norm_and_tied_embeddings(tmp_path):
    spec = load_hf_config(write(tmp_path, "q", {**QWEN3_32B, "tie_word_embeddings": True}))
    assert spec.head_dim == 128 != spec.hidden_size // spec.num_heads
    assert spec.qk_norm and spec.tied_embeddings
    assert not load_hf_config(write(tmp_path, "l", LLAMA3_8B)).qk_norm


def test_hugging_face_ids_resolve_to_presets():
    assert get_model("meta-llama/Llama-3.1-8B") is MODEL_PRESETS["Llama-3.1-8B"]
    assert get_model("Qwen/Qwen3-32B").qk_norm


@pytest.mark.parametrize("name,preset", [
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "Llama-3.1-8B"), ("meta-llama/Llama-3.3-70B-Instruct", "Llama-3.3-70B"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "Llama-3-8B"), ("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7B"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "Mistral-7B-v0.3"), ("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B"),
    ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "Llama-3.1-70B"), ("/models/Qwen2.5-7B-Instruct/", "Qwen2.5-7B"),
    ("/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B/snapshots/0e9e39f2", "Llama-3.1-8B")])
def test_fine_tunes_are_priced_as_their_base_model(name, preset, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty hub cache
    assert get_model(name) is MODEL_PRESETS[preset]
    assert says_fp8(name) == name.endswith("FP8")


def test_a_model_in_the_local_hub_cache_is_read_from_its_config(monkeypatch, tmp_path):
    snapshot = tmp_path / "models--acme--Llama-3.1-8B-Custom" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**LLAMA3_8B, "num_hidden_layers": 40}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert get_model("acme/Llama-3.1-8B-Custom").num_layers == 40  # its own config, not the preset
    with pytest.raises(ValueError, match="unknown model 'acme/Other'.*local hub cache"):
        get_model("acme/Other")
    with pytest.raises(ValueError, match="unknown model"):
        get_model("google/gemma-2-9b-it")  # another architecture is not a Llama preset


@pytest.mark.parametrize("change,message", [
    ({"model_type": "mixtral"}, "model_type 'mixtral' is not supported"),
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"hidden_size": None}, "hidden_size"),
    ({"torch_dtype": "int4"}, "torch_dtype 'int4' not understood"),
    ({"num_key_value_heads": 5}, "multiple of num_kv_heads"),
])
def test_unusable_configs_are_refused_naming_the_field(tmp_path, change, message):
    config = {k: v for k, v in {**LLAMA3_8B, **change}.items() if v is not None}
    with pytest.raises(HFConfigError, match=message):
        load_hf_config(write(tmp_path, "m", config))


def test_unreadable_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HFConfigError, match="config.json: not JSON"):
        load_hf_config(tmp_path)


@pytest.mark.parametrize("device,preset", [
    ("NVIDIA GeForce RTX 4090", "RTX4090"), ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTXPRO6000"),
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H200", "H200"), ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80G"), ("h200", "H200"), ("NVIDIA A100 80GB PCIe", "A100-80G-PCIe"),
    ("NVIDIA A100-SXM4-40GB", "A100-40G"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA H100 NVL", "H100-NVL"),
    ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA H20", "H20"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
    ("NVIDIA A10", "A10"), ("NVIDIA GeForce RTX 5090", "RTX5090"), ("nvidia rtx 4090", "RTX4090"),
    ("NVIDIA L40", "L40"), ("NVIDIA RTX 6000 Ada Generation", "RTX6000Ada"), ("NVIDIA RTX A6000", "RTXA6000")])
def test_gpus_are_found_by_the_name_the_driver_reports(device, preset):
    assert gpu_for_device(device).name == preset


def test_an_unknown_device_has_no_preset():
    assert gpu_for_device("NVIDIA Some Future GPU") is None
