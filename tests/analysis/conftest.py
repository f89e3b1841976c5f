"""Fixtures for the analyses: a labelled image build and tiny models, some with weights set by hand.

`region_clip`: a CLIP whose class logits depend only on the bottom-right quadrant of the image. Its
vision tower (32 px, 8 px patches: a 4 x 4 grid, 32 channels) is zeroed and rebuilt:
- the patch embedding writes each patch's mean pixel value into channel V; position embeddings mark
  the region's patches in channel KEY and lift their channel V by 3, and mark a decoy (the top-left
  quadrant) strongly in channel DECOY, which nothing reads; two large opposite anchor channels keep
  every token's LayerNorm scale about the same;
- block 0 is the identity; in the last block the class token's query (channel Q) matches only keys of
  region patches (channel KEY), so it averages their channel V into channel R;
- the projection maps channel R onto the text feature of class 0 and the class token's constant
  channel W onto a direction orthogonal to it, against class 1: class 0's logit rises with R.

`handset_llava`: a LLaVA whose FFN activations are ordered by hand: attention writes nothing, the
prompt's last token (':' of 'ASSISTANT:') embeds as channel 0 and every other token as channel 1, and
each neuron gates on both and scales channel 0 by its own up weight (the `TOP` neurons lead) and
channel 1 by another (neurons 63, 62, 61 lead), so only the last position gives `TOP`. The
down-projection sends neuron i to one residual channel and the unembedding gives each channel three
known tokens; see `expected_tokens`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GRID = 4
REGION = [r * GRID + c for r in (2, 3) for c in (2, 3)]  # bottom-right quadrant, patch indices
DECOY = [r * GRID + c for r in (0, 1) for c in (0, 1)]  # top-left quadrant
V, KEY, DECOY_CH, Q, W, R = 0, 1, 2, 3, 4, 5
CLASSES = ["cat", "horse"]

# hand-set LLaVA: up weights of the chosen neurons per layer (all others -0.01 * index, negative)
TOP = {0: [7, 3, 50], 1: [20, 41, 12]}
CAT_NEURON = (1, 20)  # (layer, neuron) whose tokens include " cat"


def neuron_channel(layer: int, neuron: int) -> int:
    """Residual channel neuron `neuron` of `layer` writes to (channels 0 and 1 carry the gates)."""
    return 31 if (layer, neuron) == CAT_NEURON else 2 + neuron % 29


def channel_tokens(channel: int) -> list[int]:
    """Token ids the unembedding ranks first, second and third for a residual channel."""
    return [10 + 3 * channel, 11 + 3 * channel, 12 + 3 * channel]


def expected_tokens(layer: int, neuron: int, cat_id: int) -> list[int]:
    toks = channel_tokens(neuron_channel(layer, neuron))
    return [cat_id] + toks[:2] if (layer, neuron) == CAT_NEURON else toks


def png(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def label_build(tmp_path_factory) -> Path:
    """A copy build of an image folder: 3 cats, 3 horses (32 px noise), and one cat whose top-left
    quadrant is white and bottom-right black."""
    import numpy as np

    import vlmforge

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir()
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(png(rng.integers(0, 255, (32, 32, 3), dtype="uint8")))
    a = rng.integers(0, 255, (32, 32, 3), dtype="uint8")
    a[:16, :16], a[16:, 16:] = 255, 0
    (root / "cat" / "corner.png").write_bytes(png(a))
    out = tmp_path_factory.mktemp("builds")
    return vlmforge.build("copy", "imagefolder", out=out, source_options={"root": str(root)}).path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from vlmforge.training.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "m")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from vlmforge.training.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "m")


@pytest.fixture(scope="session")
def region_clip(tmp_path_factory, tiny_clip) -> Path:
    import torch

    from vlmforge.analysis.gradcam import class_prompts, load_clip, text_features

    runner = load_clip(str(tiny_clip))
    t = text_features(runner, class_prompts(CLASSES, None))
    away = -(t[1] - (t[1] @ t[0]) * t[0])  # orthogonal to class 0, against class 1
    m = runner.model
    vm = m.vision_model
    with torch.no_grad():
        for p in vm.parameters():
            p.zero_()
        for mod in vm.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
        emb = vm.embeddings
        emb.patch_embedding.weight[V] = 0.5 / (3 * 8 * 8)
        emb.class_embedding[Q] = emb.class_embedding[W] = 1.0
        pos = emb.position_embedding.weight
        pos[:, 30], pos[:, 31] = 10.0, -10.0
        for j in REGION:
            pos[1 + j, KEY], pos[1 + j, V] = 1.0, 3.0
        for j in DECOY:
            pos[1 + j, DECOY_CH] = 5.0
        att = vm.encoder.layers[-1].self_attn
        att.q_proj.weight[0, Q] = att.k_proj.weight[0, KEY] = 25.0
        att.v_proj.weight[0, V] = att.out_proj.weight[R, 0] = 1.0
        m.visual_projection.weight.zero_()
        m.visual_projection.weight[:, R] = t[0]
        m.visual_projection.weight[:, W] = away / away.norm()
    out = tmp_path_factory.mktemp("region_clip") / "m"
    m.save_pretrained(out)
    runner.processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def handset_llava(tmp_path_factory, tiny_llava) -> Path:
    import torch

    from vlmforge.analysis.ffn import load_vlm

    runner = load_vlm(str(tiny_llava), dtype="float32")
    m = runner.model
    lm = m.get_decoder()
    tok = runner.processor.tokenizer
    cat_id = tok.convert_tokens_to_ids("Ġcat")
    last = tok("USER: <image>\nWhat is shown in this image? ASSISTANT:")["input_ids"][-1]
    with torch.no_grad():
        emb = lm.embed_tokens.weight
        emb[:, 0], emb[:, 1] = 0.0, 10.0
        emb[last, 0], emb[last, 1] = 10.0, 0.0
        for li, layer in enumerate(lm.layers):
            layer.self_attn.o_proj.weight.zero_()  # positions do not mix: the last one sees only itself
            norm = layer.post_attention_layernorm.weight
            norm.zero_()
            norm[0] = norm[1] = 1.0  # the FFN input is (x0, x1, 0, ..., 0), one of them > 0, the other 0
            mlp = layer.mlp
            mlp.gate_proj.weight.zero_()
            mlp.gate_proj.weight[:, :2] = 1.0
            width = mlp.up_proj.weight.shape[0]
            up = -0.01 * torch.arange(width, dtype=torch.float32)
            for rank, neuron in enumerate(TOP[li]):
                up[neuron] = 3.0 - rank  # activation_i = silu(x0) * x0 * up_i: ordered by up_i
            mlp.up_proj.weight.zero_()
            mlp.up_proj.weight[:, 0] = up
            mlp.up_proj.weight[:, 1] = 0.01 * torch.arange(width, dtype=torch.float32)
            down = mlp.down_proj.weight
            down.zero_()
            for i in range(down.shape[1]):
                down[neuron_channel(li, i), i] = 1.0
        head = m.lm_head.weight
        head.zero_()
        for ch in range(2, 32):
            for value, tok in zip((3.0, 2.0, 1.0), channel_tokens(ch)):
                head[tok, ch] = value
        head[cat_id, neuron_channel(*CAT_NEURON)] = 5.0
    out = tmp_path_factory.mktemp("handset_llava") / "m"
    m.save_pretrained(out)
    runner.processor.save_pretrained(out)
    return out
