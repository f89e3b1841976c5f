"""Tiny randomly initialised models built from configs, with their processors (no download).

They run the real transformers code paths on a CPU in milliseconds: tests, `make demo` and offline
trials use them; real work passes a checkpoint path or Hub id instead. Every factory saves with
`save_pretrained`, so the folder loads back with the Auto* classes like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

# Words the byte-level BPE sees while training, so that common prompt words get their own tokens.
CORPUS = [
    "USER: <image>\nWhat is in the image? ASSISTANT: A man riding a horse next to a red car on the street.",
    "In the given image, there is a vehicle heavily occluded by a cluster of gray blocks. What might the vehicle "
    "occluded by the gray blocks be? Please provide your reasoning process and confirm a unique answer.",
    "Describe the image. There are two dogs sitting on a bench with a cat. The answer is A. B. C. D.",
    "A woman and a person at a table with a pizza, a cup and a bottle in a kitchen near an oven.",
    "This is a picture of a bird with the following visual features: yellow beak, black wings. Grade 0 1 2 3 4.",
    "Answer with the option's letter from the given choices directly. Yes No",
] * 10
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}</s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def causal_lm_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained in-process, wrapped for transformers, with `<image>` special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _corpus_words() -> list[str]:
    return " ".join(CORPUS).lower().replace(".", " . ").replace("?", " ? ").split()


def bert_tokenizer(out_dir: Path, words: list[str] | None = None, bert_base_ids: bool = False):
    """A WordPiece tokenizer from a vocab written here. `bert_base_ids` puts [PAD]/[CLS]/[SEP]/'.'/'?' at
    bert-base-uncased's ids (0/101/102/1012/1029), which Grounding DINO hard-codes."""
    from transformers import BertTokenizer

    words = list(dict.fromkeys(words or _corpus_words()))
    if bert_base_ids:
        vocab = [f"[unused{i}]" for i in range(1030)]
        vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
        vocab[1012], vocab[1029] = ".", "?"
        vocab += [w for w in words if w not in (".", "?")]
    else:
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w in words if not w.startswith("[")]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    # transformers 5: the argument is `vocab=`; `vocab_file=` is silently ignored.
    return BertTokenizer(vocab=str(path), do_lower_case=True)


def make_tiny_llava(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                    init_range: float = 0.02) -> Path:
    """A LLaVA (CLIP vision tower + Llama) of ~100k parameters, saved with its processor.

    `init_range` is the standard deviation of the random weights."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = causal_lm_tokenizer()
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       initializer_range=init_range)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-2,
                      image_seq_length=(image_size // patch_size) ** 2)
    model = LlavaForConditionalGeneration(cfg)
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size}),
        tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token; the "default" strategy drops it
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def make_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A CLIP of ~50k parameters with a WordPiece tokenizer, saved with its processor. Its vocab holds
    the COCO category names and their synonyms, so that class prompts of `vlmforge sample classes`
    (and of the COCO sample's labels) tokenize apart."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = bert_tokenizer(out / "_vocab", words=_corpus_words() + _detection_words())
    cfg = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=64, projection_dim=16,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                                   eos_token_id=tok.sep_token_id),  # pooled output = first [SEP]
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37,
                                       num_hidden_layers=2, num_attention_heads=2, projection_dim=16),
        projection_dim=16,
    )
    model = CLIPModel(cfg)
    proc = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                               crop_size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


TINY_KINDS = {"llava": make_tiny_llava, "clip": make_tiny_clip}


def make_tiny(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    from vlmforge.errors import UserError

    try:
        factory = TINY_KINDS[kind]
    except KeyError:
        raise UserError(f"unknown tiny model kind {kind!r}; known: {', '.join(sorted(TINY_KINDS))}") from None
    return factory(out_dir, seed=seed)


def _detection_words() -> list[str]:
    from vlmforge.curation.grounding import SYNONYMS

    words = " ".join(CORPUS).lower().replace(".", " ").replace("?", " ").split()
    for cat, syns in SYNONYMS.items():
        words += cat.split() + [w for s in syns for w in s.split()]
    return words


def make_tiny_grounding_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """Grounding DINO with a tiny Swin backbone and a tiny BERT text encoder whose vocab puts the
    special tokens at bert-base-uncased's ids (the model hard-codes them)."""
    import torch
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig)

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = bert_tokenizer(out / "_vocab", words=_detection_words(), bert_base_ids=True)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, num_queries=10,
                              encoder_layers=1, decoder_layers=2,  # 1 decoder layer breaks bbox_embed tying
                              encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_feature_levels=4, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=64)
    model = GroundingDinoForObjectDetection(cfg).eval()
    proc = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def make_tiny_sam(out_dir: str | Path, seed: int = 0) -> Path:
    """SAM with a 2-layer ViT image encoder at 64 px."""
    import torch
    from transformers import (SamConfig, SamImageProcessorPil, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    out = Path(out_dir)
    torch.manual_seed(seed)
    size, patch, hidden = 64, 8, 32
    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=size, patch_size=patch, window_size=4, global_attn_indexes=[1],
                                      num_pos_feats=hidden // 2, mlp_dim=64),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=hidden, image_size=size, patch_size=patch,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=64, num_hidden_layers=1,
                                                 num_attention_heads=2, iou_head_hidden_dim=32),
    )
    model = SamModel(cfg).eval()
    proc = SamProcessor(image_processor=SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4}))
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def make_tiny_mlm(out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer BERT masked LM with a WordPiece vocab covering everyday caption words."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = bert_tokenizer(out / "_vocab", words=_detection_words())
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=37, max_position_embeddings=128))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_tiny_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """A Llama causal LM of ~50k parameters with the byte-level BPE tokenizer and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = causal_lm_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


TINY_KINDS.update({"grounding-dino": make_tiny_grounding_dino, "sam": make_tiny_sam, "mlm": make_tiny_mlm})
TINY_KINDS["causal-lm"] = make_tiny_causal_lm
