"""The shard loader: resolving shards, exact rank x worker splitting, resuming, weights, shuffling."""

from __future__ import annotations

import math
import tarfile
from collections import Counter

import numpy as np
import pytest

from vlmforge.errors import UserError
from vlmforge.training.data import (
    BufferedOrder, LoaderPosition, ShardStream, batch_plan, resolve_shards, scan_tar, seeded_rng,
)


def keys_of(batches) -> list[str]:
    return [s["__key__"] for b in batches for s in b["samples"]]


def all_keys(shards) -> list[str]:
    return [f"s{i:04d}" for i in range(sum(s.samples for s in resolve_shards([str(p) for p in shards])))]


def test_resolve_build_folder_glob_and_loose_tars(coco_build, loose_shards):
    by_folder = resolve_shards([str(coco_build.path)])
    by_glob = resolve_shards([str(coco_build.path / "val-*.tar")])
    assert [(r.path, r.samples, r.part) for r in by_folder] == [(r.path, r.samples, r.part) for r in by_glob]
    assert sum(r.samples for r in by_folder) == 12 and all(r.part for r in by_folder)  # offsets from the manifest
    # The manifest's offsets agree with a header scan of the same tar.
    for r in by_folder:
        off, length = r.locations()
        s_off, s_len = scan_tar(r.path)
        assert off.tolist() == s_off.tolist() and length.tolist() == s_len.tolist()
    loose = resolve_shards([str(loose_shards[0].parent / "part-{00..02}.tar")])
    assert [r.samples for r in loose] == [17, 23, 9] and all(r.part is None for r in loose)
    with tarfile.open(loose_shards[1]) as tf:  # first member of the second shard starts its first sample
        assert loose[1].offsets[0] == tf.getmembers()[0].offset
    with pytest.raises(UserError, match="no shards match"):
        resolve_shards([str(loose_shards[0].parent / "nothing-*.tar")])
    with pytest.raises(UserError, match="no shards match"):
        resolve_shards([str(loose_shards[0].parent / "nothing.tar")])
    # A brace range past the shards that exist trained on those that did, without a word
    with pytest.raises(UserError, match="2 of the shards .* names do not exist \\(first: .*part-03.tar\\)"):
        resolve_shards([str(loose_shards[0].parent / "part-{00..04}.tar")])
    with pytest.raises(UserError, match="no shards of split 'train2' \\(splits: val\\)"):
        resolve_shards([str(coco_build.path)], split="train2")
    # A split with shard paths only applied to nothing: --split test trained on the glob's train tars
    with pytest.raises(UserError, match="split 'test' applies to build folders, and none is given"):
        resolve_shards([str(coco_build.path / "val-*.tar")], split="test")
    mixed = resolve_shards([str(coco_build.path), str(loose_shards[0])], split="val")  # the split is the build's
    assert sum(r.samples for r in mixed) == 12 + 17


def test_samples_carry_every_member(loose_shards):
    stream = ShardStream(resolve_shards([str(loose_shards[1])]), batch_size=50, shuffle=False)
    (batch,) = list(stream)
    first = batch["samples"][0]
    assert first["__key__"] == "s0017" and first["json"]["id"] == "s0017" and first["mask.png"] == b"\x89PNG fake"


@pytest.mark.parametrize("pad", [False, True])
def test_each_sample_once_across_ranks_and_workers(loose_shards, pad):
    shards = resolve_shards([str(p) for p in loose_shards])
    stream = ShardStream(shards, batch_size=4, seed=7, shuffle_buffer=10, pad_ranks=pad)
    R, W = 2, 3
    per_rank = {r: [b for w in range(W) for b in stream.iter_as(r, R, w, W)] for r in range(R)}
    seen = Counter(k for r in range(R) for k in keys_of(per_rank[r]))
    expected = all_keys(loose_shards)
    if not pad:
        assert sorted(seen) == expected and set(seen.values()) == {1}  # 49 samples, none twice, none skipped
    else:
        # Every sample at least once; ranks take equal steps; only the padding repeats samples.
        assert sorted(seen) == expected and len(per_rank[0]) == len(per_rank[1]) == 7
        assert sum(seen.values()) - len(expected) <= R * 4
    # The same layout and seed give the same split; another seed another order.
    again = [k for w in range(W) for k in keys_of(stream.iter_as(0, R, w, W))]
    assert again == keys_of(per_rank[0])
    other = ShardStream(shards, batch_size=4, seed=8, shuffle_buffer=10, pad_ranks=pad)
    assert [k for w in range(W) for k in keys_of(other.iter_as(0, R, w, W))] != again


def test_batch_plan_positions_form_a_prefix():
    """After k steps on every rank, the consumed positions are exactly the first k*R*B."""
    T, B, R, W = 50, 3, 2, 2
    plans = {(r, w): list(batch_plan(T, 0, B, R, r, W, w)) for r in range(R) for w in range(W)}
    by_rank = {r: sorted((g for w in range(W) for g in plans[(r, w)]), key=lambda x: x[0]) for r in range(R)}
    for k in range(1, len(by_rank[0]) + 1):
        consumed = np.concatenate([p for r in range(R) for _, p, _ in by_rank[r][:k]])
        assert sorted(consumed.tolist()) == list(range(min(T, k * R * B)))
        assert by_rank[0][k - 1][2] == min(T, k * R * B)  # samples_seen reported with the batch


def test_dataloader_workers_keep_the_order(loose_shards):
    from torch.utils.data import DataLoader

    stream = ShardStream(resolve_shards([str(p) for p in loose_shards]), batch_size=5, seed=1, shuffle_buffer=8,
                         rank=0, world_size=1)
    single = [(keys_of([b]), b["samples_seen"]) for b in stream]
    two = [(keys_of([b]), b["samples_seen"]) for b in DataLoader(stream, batch_size=None, num_workers=2)]
    assert two == single and single[-1][1] == 49


def test_resume_continues_with_the_next_unseen_sample(loose_shards):
    shards = resolve_shards([str(p) for p in loose_shards])
    stream = ShardStream(shards, batch_size=4, seed=3, shuffle_buffer=16, rank=0, world_size=1)
    full = list(stream)
    done = full[:5]
    pos = LoaderPosition(done[-1]["epoch"], done[-1]["samples_seen"], 3)
    assert pos.samples_seen == 20
    resumed = ShardStream(shards, batch_size=4, seed=3, shuffle_buffer=16, position=pos, rank=0, world_size=1)
    assert keys_of(done) + keys_of(resumed) == keys_of(full)
    # A resumed run with another batch size and two "ranks" still takes exactly the rest.
    other = ShardStream(shards, batch_size=3, seed=3, shuffle_buffer=16, position=pos)
    rest = [k for r in range(2) for k in keys_of(other.iter_as(r, 2, 0, 1))]
    assert sorted(rest) == sorted(keys_of(full)[20:])


def test_weights_repeat_and_subsample(loose_shards):
    a, b = str(loose_shards[0]), str(loose_shards[1])  # 17 and 23 samples
    stream = ShardStream(resolve_shards([a, b]), batch_size=8, weights=[2.0, 0.5], seed=0)
    assert stream.epoch_size() == 34 + 12
    counts = Counter(keys_of(stream))
    from_a = {k: c for k, c in counts.items() if int(k[1:]) < 17}
    from_b = {k: c for k, c in counts.items() if int(k[1:]) >= 17}
    assert len(from_a) == 17 and set(from_a.values()) == {2}
    assert len(from_b) == 12 and set(from_b.values()) == {1}
    next_epoch = ShardStream(resolve_shards([a, b]), batch_size=8, weights=[2.0, 0.5], seed=0,
                             position=LoaderPosition(1, 0, 0))
    assert {k for k in keys_of(next_epoch) if int(k[1:]) >= 17} != set(from_b)  # a new subset each epoch
    with pytest.raises(UserError, match="one weight per"):
        ShardStream(resolve_shards([a, b]), batch_size=8, weights=[1.0])
    for weights in ([0.0, 0.0], [0.02, 0.0]):  # 17 * 0.02 rounds to 0: training waited for a batch forever
        with pytest.raises(UserError, match="leave no sample in an epoch"):
            ShardStream(resolve_shards([a, b]), batch_size=8, weights=weights)


def test_shuffle_buffer_mixes_and_is_seeded():
    stream = np.arange(1000)
    order = BufferedOrder(stream, 100, seeded_rng(0, 0, "buffer"))
    out = order[np.arange(1000)]
    assert sorted(out.tolist()) == list(range(1000)) and out.tolist() != list(range(1000))
    # An item cannot leave before it entered: none comes out more than buffer-1 places early.
    assert int((out - np.arange(1000)).max()) <= 99
    big = np.arange(30_000)
    lazy = BufferedOrder(big, 100, seeded_rng(0, 0, "buffer"))
    first = lazy[np.array([5, 3])]
    assert lazy.done < 30_000  # computed only as far as asked (plus a chunk)
    whole = BufferedOrder(big, 100, seeded_rng(0, 0, "buffer"))[np.arange(30_000)]
    assert first.tolist() == whole[[5, 3]].tolist() and lazy[np.arange(30_000)].tolist() == whole.tolist()
    assert BufferedOrder(stream, 1, seeded_rng(0)).__getitem__(np.arange(1000)).tolist() == list(range(1000))


def test_long_member_names_from_pax_headers(tmp_path):
    from tests.training.conftest import write_tar

    keys = ["k" * 150 + str(i) for i in range(3)]  # longer than ustar's 100-character name field
    path = write_tar(tmp_path / "long.tar", keys, extra=True)
    (batch,) = list(ShardStream(resolve_shards([str(path)]), batch_size=5, shuffle=False))
    assert [s["__key__"] for s in batch["samples"]] == keys
    assert all(s["json"]["id"] == k and s["mask.png"] == b"\x89PNG fake" for s, k in zip(batch["samples"], keys))


def test_a_damaged_build_json_is_one_error(tmp_path, coco_build):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(coco_build.path, copy)
    (copy / "build.json").write_text("{")
    for spec in (str(copy), str(copy / "*.tar")):
        with pytest.raises(UserError, match="build.json is not valid JSON"):
            resolve_shards([spec])


def test_a_build_without_train_split_is_not_trained_on_its_test_split(tmp_path, coco_build):
    """Every split of a build without a train split was the default: an mcqa or val/test build trained
    on its test data without a word."""
    import vlmforge

    b = vlmforge.build("split", "build", out=tmp_path, source_options={"path": str(coco_build.path)},
                       splits="val=0.5,test=0.5")
    with pytest.raises(UserError, match="has no train split, so training on all of it would train on its test "
                                        "split \\(splits: test, val\\); name a split with --split"):
        resolve_shards([str(b.path)], training=True)
    counts = {s: b.info["splits"][s]["samples"] for s in ("val", "test")}
    assert sum(r.samples for r in resolve_shards([str(b.path)], "val", training=True)) == counts["val"]
    assert sum(r.samples for r in resolve_shards([str(b.path)], "test", training=True)) == counts["test"]
    # A glob over the build's tars took its test shards along with the others.
    with pytest.raises(UserError, match=f"^'{b.path}/\\*.tar' matches shards of the splits test, val, so training "
                                        "would read test data; give the build folder \\(its train split\\) or one "
                                        "split's shards$"):
        resolve_shards([str(b.path / "*.tar")], training=True)
    assert sum(r.samples for r in resolve_shards([str(b.path / "test-*.tar")], training=True)) == counts["test"]
    assert sum(r.samples for r in resolve_shards([str(b.path / "*.tar")])) == 12
    # Validation data and a build whose only split is not a test split keep the default: every split.
    assert sum(r.samples for r in resolve_shards([str(b.path)])) == 12
    assert sum(r.samples for r in resolve_shards([str(coco_build.path)], training=True)) == 12


def test_weights_that_make_no_whole_epoch_are_refused(loose_shards):
    """inf and nan were an OverflowError or ValueError traceback in the epoch's size; 1e300 made an epoch whose
    order the run tried to build in memory, and hung."""
    shards = resolve_shards([str(loose_shards[0])])
    for weights, message in (([math.inf], "weights must be finite numbers"), ([math.nan], "weights must be finite"),
                             ([1e300], "make an epoch of about 10\\^301 samples, more than 1,000,000,000"),
                             ([6e7], "make an epoch of 1,020,000,000 samples")):
        with pytest.raises(UserError, match=message):
            ShardStream(shards, batch_size=8, weights=weights)
