"""Merged export streamed layer by layer into several safetensors shards loads as a plain Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pcpretrain import pc
from pcpretrain.checkpoint_weights import layer_groups
from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.config import ModelConfig
from pcpretrain.data.tokenizer import Tokenizer, load_tokenizer
from pcpretrain.export import write_merged_groups, write_merged_model
from pcpretrain.model import build_model

MODEL = ModelConfig(hidden_size=32, intermediate_size=80, num_layers=3, num_heads=4, max_seq_len=64)


@pytest.fixture(scope="module")
def tokenizer(shared_dir: Path) -> Tokenizer:
    return load_tokenizer(shared_dir / "tokenizers" / "llama2" / "tokenizer.model")


@pytest.fixture(scope="module")
def pc_model(tokenizer: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MODEL, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    pc.apply_pc(model, 4, DEFAULT_PC_TARGETS, power_iters=10, seed=0)
    return model.eval()


def test_layer_by_layer_export_writes_indexed_shards_that_reproduce_the_pc_model(
    pc_model: torch.nn.Module, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    state_dict = pc_model.state_dict()
    groups = ({name: state_dict[name] for name in names} for names in layer_groups(list(state_dict)))
    out = write_merged_groups(
        groups,
        model_cfg=MODEL,
        pc_degree=4,
        tokenizer=tokenizer,
        out_dir=tmp_path / "merged",
        max_shard_bytes=1,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]  # embeddings/head + 3 layers
    assert not (out / "model.safetensors").exists()
    assert not any(".pc_" in name for name in index["weight_map"])

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens).logits, pc_model(tokens).logits, rtol=1e-4, atol=1e-5)


def test_a_small_model_is_one_model_safetensors_file(
    pc_model: torch.nn.Module, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    out = write_merged_model(
        pc_model.state_dict(), model_cfg=MODEL, pc_degree=4, tokenizer=tokenizer, out_dir=tmp_path / "merged"
    )
    assert (out / "model.safetensors").is_file()
    assert not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_a_hugging_face_tokenizer_travels_with_the_merged_model(tmp_path: Path) -> None:
    """A byte-level BPE (tokenizer.json) run exports a directory whose AutoTokenizer gives training's ids."""
    from transformers import AutoTokenizer

    from pcpretrain.data.tokenizer import train_bpe

    documents = [
        f"the merged model number {i} carries its own tokenizer, {i * 7} times.\n" for i in range(80)
    ]
    bpe = train_bpe(documents, 300, tmp_path / "bpe")
    model = build_model(MODEL, 320, bpe.bos_id, bpe.eos_id)
    out = write_merged_model(
        model.state_dict(), model_cfg=MODEL, pc_degree=0, tokenizer=bpe, out_dir=tmp_path / "merged"
    )
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "tokenizer.model").exists()
    hf = AutoTokenizer.from_pretrained(out)
    text = "The merged model, number 1667, carries  its tokenizer.\n"
    assert hf.encode(text, add_special_tokens=False) == bpe.encode(text)
    assert (hf.bos_token_id, hf.eos_token_id) == (bpe.bos_id, bpe.eos_id)
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (320, 0, 1)
