import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A shell without job control that starts the tests in the background (`./.ci/run &`) makes them ignore
# SIGINT, and every process they start inherits that: the interrupt tests need Ctrl-C to act as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Keep the embedded sample and model caches of the test run out of the user's home."""
    cache = tmp_path_factory.mktemp("vlmforge-cache")
    old = os.environ.get("VLMFORGE_CACHE")
    os.environ["VLMFORGE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("VLMFORGE_CACHE", None)
    else:
        os.environ["VLMFORGE_CACHE"] = old


@pytest.fixture(scope="session")
def sample_coco(tmp_path_factory) -> Path:
    """A 12-image COCO-format sample in the official layout (root/annotations, root/val2017)."""
    from vlmforge.sources.sample_coco import make_sample

    return make_sample(tmp_path_factory.mktemp("coco") / "coco", images=12, seed=3)


@pytest.fixture
def coco_copy(tmp_path, sample_coco) -> Path:
    """A private, writable copy of the sample (tests that damage files use this)."""
    dst = tmp_path / "coco"
    shutil.copytree(sample_coco, dst)
    return dst


@pytest.fixture(scope="session")
def coco_build(tmp_path_factory, sample_coco):
    """The embedded COCO sample (480x360 JPEGs) copied into a build: 12 samples with a human/gpt
    conversation, 3 shards."""
    import vlmforge

    return vlmforge.build("copy", "coco", out=tmp_path_factory.mktemp("cocobuild"), max_samples_per_shard=5,
                          source_options={"coco_root": str(sample_coco), "split": "val2017"})


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """What `vlmforge model init-tiny --kind clip` writes: a CLIP of ~50k parameters, processor at 32 px."""
    from vlmforge.training.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny") / "clip")
