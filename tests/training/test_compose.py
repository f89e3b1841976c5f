"""`model compose`: LLaVA from a pretrained vision tower (DINOv2, MAE, ...) and a language model (Qwen2, Llama)."""

from __future__ import annotations

import math

import pytest
import torch


def _tiny_parts(root, vision_kind: str, lm_kind: str):
    from transformers import (BitImageProcessorPil, Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM, ViTImageProcessorPil, ViTMAEConfig, ViTMAEModel)

    from vlmforge.training.tiny import causal_lm_tokenizer

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
                  patch_size=8)
    if vision_kind == "dinov2":
        tower = Dinov2Model(Dinov2Config(**common))
        ip = BitImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    else:
        tower = ViTMAEModel(ViTMAEConfig(**common, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                         decoder_intermediate_size=16, decoder_num_attention_heads=2))
        ip = ViTImageProcessorPil(size={"height": 32, "width": 32})
    tower.save_pretrained(root / "vision")
    ip.save_pretrained(root / "vision")
    tok = causal_lm_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
    lm = (Qwen2ForCausalLM(Qwen2Config(**text, tie_word_embeddings=True)) if lm_kind == "qwen2"
          else LlamaForCausalLM(LlamaConfig(**text)))
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    return root / "vision", root / "lm", tower, lm


@pytest.mark.parametrize("vision_kind, lm_kind", [("dinov2", "qwen2"), ("mae", "llama")])
def test_compose_keeps_pretrained_parts_and_trains(tmp_path, coco_build, vision_kind, lm_kind):
    from transformers import AutoModelForImageTextToText

    from vlmforge.training.compose import compose_llava
    from vlmforge.training.trainer import TrainConfig, train

    vision, lm_dir, tower, lm = _tiny_parts(tmp_path, vision_kind, lm_kind)
    out = compose_llava(str(vision), str(lm_dir), tmp_path / "composed")
    model = AutoModelForImageTextToText.from_pretrained(out)
    # The language model's weights are the pretrained ones (the embeddings may have grown).
    for name, p in lm.model.state_dict().items():
        if "embed_tokens" not in name:
            assert torch.equal(model.model.language_model.state_dict()[name], p), name
    vision_state = model.model.vision_tower.state_dict()
    for name, p in tower.state_dict().items():
        if name in vision_state:  # MAE: the encoder lands in a plain ViT
            assert torch.equal(vision_state[name], p), name
    assert sum(1 for n in tower.state_dict() if n in vision_state) >= 20
    losses: list[float] = []
    train(TrainConfig(shards=[str(coco_build.path)], model=str(out), out=str(tmp_path / "run"), mode="projector",
                      lr=3e-2, batch_size=4, max_steps=6, workers=0, save_every=6, warmup_ratio=0.0,
                      scheduler="constant", max_length=128, quiet=True),
          on_step=lambda step, rec: losses.append(rec["loss"]))
    # Image tokens and features line up: the loss is finite and the projector alone brings it down.
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[3:]) < 0.97 * sum(losses[:3]), losses  # two epochs of the same 12 samples


@pytest.mark.parametrize("layer", [3, -4, 99])
def test_feature_layer_out_of_range(tmp_path, layer):
    from vlmforge.errors import UserError
    from vlmforge.training.compose import compose_llava

    vision, lm, _, _ = _tiny_parts(tmp_path, "dinov2", "qwen2")
    with pytest.raises(UserError, match=r"out of range: .* has 2 layers, so use -3\.\.2"):
        compose_llava(str(vision), str(lm), tmp_path / "out", feature_layer=layer)
    assert not (tmp_path / "out").exists()


def test_feature_layer_bounds_are_usable(tmp_path):
    from vlmforge.training.compose import check_feature_layer

    _, _, tower, _ = _tiny_parts(tmp_path, "dinov2", "qwen2")
    states = tower(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True).hidden_states
    for layer in (-3, 2):  # the bounds the check allows index real hidden states
        check_feature_layer(layer, tower.config.num_hidden_layers, "vision")
        assert states[layer] is not None
    assert len(states) == 3


def test_a_missing_local_part_is_named(tmp_path):
    from vlmforge.errors import UserError
    from vlmforge.training.compose import compose_llava

    with pytest.raises(UserError, match="no model at .*nonexist"):
        compose_llava(str(tmp_path / "m" / "nonexist"), "Qwen/Qwen2-0.5B", tmp_path / "out")


def test_composing_into_another_models_folder_is_refused(tmp_path):
    from vlmforge.errors import UserError
    from vlmforge.training.compose import compose_llava

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"another model")
    with pytest.raises(UserError, match="exists and is not empty"):  # it wrote over the folder
        compose_llava("any/vision", "any/lm", tmp_path / "out")


def test_a_part_of_another_kind_is_named(tmp_path, tiny_clip):
    """A CLIP given as the language model was 'cannot load the parts: Unrecognized configuration class <class
    ...CLIPConfig> for this kind of AutoModel: AutoModelForCausalLM': neither which part nor what it is."""
    from vlmforge.errors import UserError
    from vlmforge.training.compose import compose_llava

    with pytest.raises(UserError, match=f"^--language-model {tiny_clip} is a clip model, not a causal language model$"):
        compose_llava(str(tiny_clip), str(tiny_clip), tmp_path / "out")
