"""A Ray cluster that goes down during a build: the build stops with a line that says so and what to do,
and resumes to the same bytes once the cluster is back.

Its own module: each test makes a cluster of two nodes on this machine (ray.cluster_utils), a head with
no CPU and one worker node, whose raylet a batch kills (the system's OOM killer does the same)."""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest

from vlmforge.builders.base import run_build
from vlmforge.errors import BuildError
from vlmforge.executors.ray import RayExecutor
from vlmforge.manifests.writer import complete_shards

from tests.executors.test_ray import (LIMITS, SmallBatchCopy, _builder, _first_time, _same,  # noqa: F401
                                      local_copy)


class NodeKillingCopy(SmallBatchCopy):
    """Kills the node it runs on (its raylet, the worker's parent, and itself) on the batch of
    `node_victim`, once, when the driver has written a shard."""

    node_victim: str | None = None
    out_dir = ""

    def process(self, batch):
        if any(r["source_id"] == self.node_victim for r in batch) and _first_time(os.path.join(self.log_dir, "killed")):
            deadline = time.monotonic() + 60
            while not glob.glob(f"{self.out_dir}/*/*/manifest/*.stats.json") and time.monotonic() < deadline:
                time.sleep(0.1)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # the node's processes go with it
        return super().process(batch)


class NodeKillingModelCopy(NodeKillingCopy):
    def setup(self) -> None:
        pass


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cls", [NodeKillingCopy, NodeKillingModelCopy], ids=["tasks", "actors"])
def test_a_cluster_that_loses_its_workers_node_says_so_and_the_build_resumes(cluster, tmp_path, sample_coco,
                                                                            local_copy, cls):
    """Before: as tasks the build waited for ever for a node with a CPU; as actors it said a worker died
    and stayed down after 3 restarts (ActorUnavailableError)."""
    out = tmp_path / "out"
    ex = RayExecutor()
    ex.node_loss_grace_s = 3
    b = _builder(cls, sample_coco, tmp_path / "log", victim_index=11)
    b.node_victim, b.victim, b.out_dir = b.victim, None, str(out)
    with pytest.raises(BuildError) as err:
        run_build(b, out, ex, LIMITS, quiet=True)
    message = str(err.value)
    assert message.startswith("the Ray cluster went down (1 of its 2 nodes lost: ") and "stayed down" not in message
    assert message.endswith("complete shards are kept: once the cluster is back (`ray start` on its nodes), "
                            "rerun the same command to resume")
    kept = complete_shards(out / "copy" / cls.VERSION, "val")
    assert 0 < len(kept) < 6
    cluster.add_node(num_cpus=2)
    path = run_build(_builder(SmallBatchCopy, sample_coco, tmp_path / "log2"), out, RayExecutor(), LIMITS, quiet=True)
    _same(path, local_copy)


def test_a_lost_result_with_every_node_up_is_not_called_a_cluster_down(monkeypatch):
    """Before: any ObjectLostError said 'the Ray cluster went down' and to `ray start` its nodes, also when
    every node was still up (the result's owner lost it); now that is said only when a node is gone."""
    import ray
    from ray.exceptions import ObjectLostError

    from vlmforge.executors import ray as ray_executor

    ex = ray_executor.RayExecutor()
    ex._started, ex._nodes_at_start = False, {"n1": "192.0.2.1", "n2": "192.0.2.2"}
    monkeypatch.setattr(ray_executor, "NODE_NOTICE_S", 0)

    def lost(*args, **kwargs):
        raise ObjectLostError("ab" * 14, None, "")

    monkeypatch.setattr(ray, "wait", lost)
    monkeypatch.setattr(ray_executor, "_alive_nodes", lambda: {"n1": "192.0.2.1", "n2": "192.0.2.2"})
    with pytest.raises(BuildError, match=r"Ray lost the result of inputs 4-5 \(ObjectLostError\) with every node "
                                         r"still up; .* rerun the same command to resume") as e:
        ex._result((4, 2, object()))
    assert "went down" not in str(e.value)
    monkeypatch.setattr(ray_executor, "_alive_nodes", lambda: {"n1": "192.0.2.1"})  # n2 is gone
    with pytest.raises(BuildError, match=r"the Ray cluster went down \(1 of its 2 nodes lost: 192.0.2.2\)"):
        ex._result((4, 2, object()))
