"""Segmentation: a boolean mask per grounded entity.

- `annotations` (offline default): the instances' own polygons or RLE, decoded with pycocotools.
- `sam`: transformers' SAM (any checkpoint, e.g. facebook/sam-vit-base) prompted with the boxes,
  one forward pass per image for all its boxes; the mask with the best predicted IoU is kept.
- `box`: the box itself, filled (for detectors without instance masks, and as a cheap baseline).
"""

from __future__ import annotations

import numpy as np


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """A COCO instance's segmentation (polygons, RLE or compressed RLE) as a bool (H, W) array."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def box_mask(boxes: list[list[float]], height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        m[y0:y1, x0:x1] = True
    return m


class SamSegmenter:
    name = "sam"
    resources = {"cpu": 1, "gpu": 1}

    def __init__(self, model: str = "facebook/sam-vit-base", device: str | None = None):
        self.model_name = model
        self.device = device
        self._model = None

    def setup(self) -> None:
        if self._model is not None:
            return
        from transformers import SamModel, SamProcessor

        from vlmforge.curation.models import load_checkpoint, torch_device

        self._proc, model = load_checkpoint("SAM", self.model_name, lambda: (
            SamProcessor.from_pretrained(self.model_name), SamModel.from_pretrained(self.model_name)))
        self._device = torch_device(self.device)
        self._model = model.eval().to(self._device)

    def __call__(self, image, boxes: list[list[float]]) -> list[np.ndarray]:
        """Masks (bool, image size) for `boxes` ([x, y, w, h] in pixels) on one PIL image."""
        import torch

        self.setup()
        if not boxes:
            return []
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        inputs = self._proc(images=image, input_boxes=[xyxy], return_tensors="pt")
        with torch.no_grad():
            out = self._model(**{k: v.to(self._device) for k, v in inputs.items()}, multimask_output=True)
        masks = self._proc.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
        best = out.iou_scores[0].float().cpu().argmax(-1)  # (n_boxes,)
        return [masks[i, int(best[i])].numpy().astype(bool) for i in range(len(boxes))]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("_proc", None)
        return state
