"""Looking inside trained models with test data from builds.

- `gradcam`: Grad-CAM heatmaps of a CLIP model used as a classifier over class prompts.
- `ffn`: which tokens the most active FFN neurons of a LLaVA-style model promote, layer by layer.
- `samples`: the test samples both read (a build folder or shard glob, an optional SQL filter).
"""
