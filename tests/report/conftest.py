import pytest

import vlmforge

from tests.report.tiny_occlusion import build_tiny_occlusion


@pytest.fixture(scope="package")
def occ_build(tmp_path_factory, sample_coco):
    """Occlusion-like build of the 12-image sample: train 6 + 2 rejects, val 4; jpg, mask.png, orig.jpg, json."""
    return build_tiny_occlusion(sample_coco, tmp_path_factory.mktemp("occ"), max_samples_per_shard=3)


@pytest.fixture(scope="package")
def copy_build(tmp_path_factory):
    """The copy builder on the embedded COCO sample (32 images, jpg + json, no label)."""
    return vlmforge.build("copy", "coco", out=tmp_path_factory.mktemp("copy"))
