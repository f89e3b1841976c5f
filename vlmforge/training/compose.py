"""`vlmforge model compose`: a LLaVA-style model from a pretrained vision tower and a pretrained
language model, joined by a new projector (to be trained with `--mode projector`, then full or LoRA).

Vision towers: CLIP (vision part of a CLIP checkpoint or a CLIP vision model), SigLIP, DINOv2, ViT,
and MAE (its encoder is loaded as a plain ViT: transformers' ViTMAEModel shuffles and masks patches
on every call, which a VLM cannot use). Language models: any causal LM with a `.model` body and an
`lm_head` (Llama, Qwen2, Mistral, ...). An `<image>` token is added to the tokenizer when missing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import UserError

# A LLaVA-1.5-style chat template that works with any tokenizer (its own end-of-sequence token).
COMPOSE_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@contextmanager
def _loading(name: str, option: str, what: str) -> Iterator[None]:
    """Loading errors of one part as one line naming the option, and the kind of model given when it is
    another kind."""
    try:
        yield
    except (OSError, ValueError) as e:
        if str(e).startswith("Unrecognized configuration class"):
            from transformers import AutoConfig

            kind = AutoConfig.from_pretrained(name).model_type
            raise UserError(f"{option} {name} is a {kind} model, not {what}") from None
        raise UserError(f"cannot load {option} {name}: {str(e).splitlines()[0]}") from None


def _vision_parts(vision: str) -> tuple[Any, Any]:
    """(vision config LLaVA will build its tower from, the tower with pretrained weights)."""
    from transformers import AutoConfig, AutoModel, ViTConfig, ViTModel

    cfg = AutoConfig.from_pretrained(vision)
    if cfg.model_type == "vit_mae":
        # The MAE encoder is a ViT with fixed sin-cos position embeddings: load it as one.
        vit_cfg = ViTConfig(**{k: v for k, v in cfg.to_dict().items() if k in ViTConfig().to_dict()
                               and k not in ("model_type", "architectures", "transformers_version")})
        mae = AutoModel.from_pretrained(vision)
        tower = ViTModel(vit_cfg, add_pooling_layer=False)
        missing, unexpected = tower.load_state_dict(mae.state_dict(), strict=False)
        if unexpected or [m for m in missing if "mask_token" not in m]:
            raise UserError(f"the MAE checkpoint {vision} does not map onto a ViT ({(missing + unexpected)[:3]})")
        return vit_cfg, tower
    if hasattr(cfg, "vision_config"):  # a two-tower checkpoint (CLIP, SigLIP): keep the vision side
        cfg = cfg.vision_config
    tower_cls = type(AutoModel.from_config(cfg))
    return cfg, tower_cls.from_pretrained(vision)


def check_feature_layer(layer: int, n_layers: int | None, vision: str) -> None:
    """`layer` indexes the tower's hidden states: the embeddings plus one per layer, so n_layers + 1 of them,
    from the end when negative (as transformers does). An index past them only fails at the first forward."""
    if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
        raise UserError(f"--feature-layer {layer} is out of range: {vision} has {n_layers} layers, so use "
                        f"{-(n_layers + 1)}..{n_layers} (0 = the embeddings, -1 = the last layer, LLaVA uses -2)")


def compose_llava(vision: str, language_model: str, out: str | Path, feature_layer: int = -2,
                  strategy: str = "default", seed: int = 0) -> Path:
    """Write a LlavaForConditionalGeneration made of `vision` and `language_model` (paths or Hub ids)
    with a randomly initialised projector, plus its processor, to `out`."""
    import torch
    from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    if strategy not in ("default", "full"):
        raise UserError("--strategy must be default (drop the first token, CLS) or full")
    from vlmforge.curation.models import check_model_name
    from vlmforge.training.llava import check_empty_out

    check_empty_out(Path(out))  # it wrote over another model's folder
    for name in (vision, language_model):  # a mistyped local path, not a Hub connection error
        check_model_name(name)
    # Each part named with its own failure: 'cannot load the parts: Unrecognized configuration class <class
    # ...CLIPConfig> for this kind of AutoModel: AutoModelForCausalLM' left the user to guess which was wrong.
    with _loading(vision, "--vision", "a vision tower"):
        vision_cfg, tower = _vision_parts(vision)
        image_processor = AutoImageProcessor.from_pretrained(vision)
    with _loading(language_model, "--language-model", "a causal language model"):
        lm = AutoModelForCausalLM.from_pretrained(language_model)
        tok = AutoTokenizer.from_pretrained(language_model)
    check_feature_layer(feature_layer, getattr(vision_cfg, "num_hidden_layers", None), vision)
    if not hasattr(lm, "model") or not hasattr(lm, "lm_head"):
        raise UserError(f"{language_model} is a {type(lm).__name__}; expected a causal LM with .model and .lm_head")
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    size = _processed_size(image_processor)
    patch = getattr(vision_cfg, "patch_size", None)
    if not patch:
        raise UserError(f"cannot tell the patch size of {vision}")
    with torch.no_grad():
        seq_len = tower(pixel_values=torch.zeros(1, 3, size[0], size[1])).last_hidden_state.shape[1]
    patches = (size[0] // patch) * (size[1] // patch)
    extra = seq_len - patches  # CLS and register tokens
    n_image = seq_len - (1 if strategy == "default" else 0)

    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=vision_cfg, text_config=lm.config, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer,
                      image_seq_length=n_image)
    model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower = tower
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    model.resize_token_embeddings(len(tok))
    model.config.text_config.vocab_size = len(tok)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
                               chat_template=COMPOSE_CHAT_TEMPLATE)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _processed_size(ip: Any) -> tuple[int, int]:
    """(height, width) of the pixel values an image processor makes."""
    crop = getattr(ip, "crop_size", None) if getattr(ip, "do_center_crop", False) else None
    if crop:
        return crop["height"], crop["width"]
    size = getattr(ip, "size", {}) or {}
    if "height" in size:
        return size["height"], size["width"]
    if "shortest_edge" in size:
        return size["shortest_edge"], size["shortest_edge"]
    raise UserError("cannot tell the image size the vision tower's processor makes")
