"""The tiny models `vlmforge model init-tiny` writes."""

from transformers import AutoTokenizer

from vlmforge.sources.sample_coco import CATEGORIES


def test_tiny_clip_tells_every_coco_category_apart(tiny_clip):
    # `vlmforge sample classes` labels its crops with the COCO sample's categories: a CLIP trained on
    # them must see a different prompt for each ("traffic light" and "sports ball" too).
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    prompts = {name: tuple(tok(f"a photo of a {name}.")["input_ids"]) for name in CATEGORIES}
    assert len(set(prompts.values())) == len(CATEGORIES)
    assert all(tok.unk_token_id not in tok(name)["input_ids"] for name in CATEGORIES)
