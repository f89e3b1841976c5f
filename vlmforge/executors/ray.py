"""Run a builder's `process` on a Ray cluster, with the same results, in the same order, as locally.

Two shapes, chosen from what the builder declares:
- a **model stage** (the builder overrides `setup()`, or it or one of its backends declares a
  `resources` dict, or it needs a GPU) runs on a pool of actors: each actor calls `setup()` once, so
  a model loads once per actor, and batches go to the least busy actor;
- **CPU work** (no setup, nothing declared) runs as stateless Ray tasks; each worker process
  unpickles the builder once and reuses it.

Results are fetched in submission order, so the driver's single shard writer sees exactly the
stream the local executor gives it: same shards, same bytes. At most `2 * concurrency` batches are in
flight. A worker or actor that dies (killed process, lost node) is restarted and its batches retried
(`max_retries`); an exception raised by the builder itself is a bug or bad data and is not retried.
When the cluster goes down (its nodes, or the CPUs/GPUs the workers need, gone for
`NODE_LOSS_GRACE_S`), the build stops with a line that says so: Ray itself would wait for ever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

from vlmforge.errors import BuildError, UserError
from vlmforge.executors.local import check_workers, sendable
from vlmforge.sample import finish_results

if TYPE_CHECKING:
    from vlmforge.builders.base import Builder

# Per worker process: (builder object-ref id, builder after setup()), reused batch after batch.
_WORKER_BUILDER: tuple[str, Any] | None = None


CONNECT_TIMEOUT_S = 10
NODE_LOSS_GRACE_S = 60  # how long lost nodes may take to come back (an autoscaler, a restart)
NODE_NOTICE_S = 30  # Ray's health checks mark a node dead within this
POLL_S = 1.0
_HOST_PORT = re.compile(r"^(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)$")  # host:port, ray://host:port, [v6]:port


def check_address(address: str, option: str = "--ray-address") -> None:
    """A UserError for an address Ray cannot parse (ray.init raises a ValueError with a traceback)."""
    value = address.strip()
    if value in ("auto", "local") or "://" in value or _HOST_PORT.match(value):
        return
    raise UserError(f"{option} {address!r} is not a Ray address; give auto, HOST:PORT (the address "
                    "`ray start --head` printed) or ray://HOST:PORT")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within `timeout` seconds when nothing listens at a cluster's host:port. ray.init itself
    keeps retrying such an address with a warning every 30 s and does not give up, which hangs a
    batch job. Other address forms (auto, local, other schemes) are left to Ray."""
    m = _HOST_PORT.match(address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UserError(f"cannot reach the Ray cluster at {address} ({reason}); check the address that "
                        "`ray start --head` printed and that the cluster is running") from None


def check_token(address: str) -> None:
    """Fail at once when a cluster's host:port refuses this driver's token. Ray 2.60 clusters ask for
    one by default, and ray.init, without it, retries for 20 s with a warning line each second."""
    m = _HOST_PORT.match(address.strip())
    if not m or address.strip().startswith("ray://"):
        return
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: leave it to ray.init
        return
    with _stderr_silenced():  # Ray's C++ client logs the refusal too, as a warning line
        try:
            GcsClient(address=f"{m.group(1)}:{m.group(2)}")
        except AuthenticationError:
            refused = True
        except Exception:  # anything else is ray.init's to report
            refused = False
        else:
            refused = False
    if refused:
        state = "gives a token it does not accept" if os.environ.get("RAY_AUTH_MODE") == "token" else "gives no token"
        raise UserError(f"the Ray cluster at {address} asks for its token (Ray's token authentication) and this "
                        f"command {state}: set RAY_AUTH_MODE=token and the token that `ray get-auth-token` prints "
                        "on the head node in RAY_AUTH_TOKEN (or ~/.ray/auth_token)")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the block (C++ libraries write to it directly)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _AuthOnNotice(logging.Filter):
    """Drops Ray's warning that token authentication is on (Ray's default, printed by every build):
    `--quiet` prints nothing but errors. Its warning that authentication is off stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


_AUTH_ON_NOTICE = _AuthOnNotice()


class StagePlan(NamedTuple):
    """How one builder runs on the cluster: actors or tasks, how many at once, and what each holds."""

    mode: str  # "actors" (model stage, setup once per actor) or "tasks" (stateless CPU work)
    concurrency: int
    num_cpus: float
    num_gpus: float


def declared_resources(builder: "Builder") -> dict[str, float]:
    """What one worker of `builder` needs, e.g. {"cpu": 1} or {"cpu": 1, "gpu": 1}.

    The builder's own `resources` attribute wins; otherwise the largest need per resource among the
    backends it holds as attributes (directly, or in a list, tuple or dict), since one worker runs them
    all. Empty when nothing is declared."""
    own = getattr(builder, "resources", None)
    if isinstance(own, dict) and own:
        return {k.lower(): float(v) for k, v in own.items()}
    found: dict[str, float] = {}
    for value in vars(builder).values():
        members = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        if len(members) > 64:
            continue  # a lookup table (per-image data), not a handful of backends
        for obj in members:
            res = getattr(obj, "resources", None)
            if isinstance(res, dict):
                for k, v in res.items():
                    found[k.lower()] = max(found.get(k.lower(), 0.0), float(v))
    return found


def is_model_stage(builder: "Builder", declared: dict[str, float]) -> bool:
    """A builder that loads something in `setup()` or declares resources keeps state per worker."""
    from vlmforge.builders.base import Builder

    return type(builder).setup is not Builder.setup or bool(declared)


def plan_stage(
    declared: dict[str, float],
    model_stage: bool,
    cluster: dict[str, float],
    concurrency: int | None = None,
    gpus_per_model_worker: float | None = None,
) -> StagePlan:
    """Decide actors or tasks, concurrency and per-worker CPUs/GPUs for a cluster's total resources.

    Concurrency defaults to what the cluster fits: GPUs / GPUs per worker for a GPU stage, else
    CPUs / CPUs per worker. Actors never ask for more CPU than the cluster has divided by their
    number (fractions are fine): an actor that cannot be placed would wait forever, and the build with
    it (the 2-CPU trap of Ray actor pools)."""
    cpus_total = float(cluster.get("CPU", 0))
    gpus_total = float(cluster.get("GPU", 0))
    cpu = float(declared.get("cpu", 1.0))
    gpu = float(declared.get("gpu", 0.0))
    if model_stage and gpus_per_model_worker is not None:
        gpu = float(gpus_per_model_worker)
    if gpu > 0:
        if gpus_total <= 0:
            raise UserError(f"the model stage asks for {gpu:g} GPU per worker but the Ray cluster has no GPU; "
                            "pass --gpus-per-model-worker 0 to run it on CPUs, or connect to a cluster with GPUs")
        fits = int(gpus_total // gpu + 1e-9)
        if fits < 1:
            raise UserError(f"one model worker needs {gpu:g} GPUs; the Ray cluster has {gpus_total:g}")
        n = concurrency or fits
        if n > fits:
            raise UserError(f"{n} model workers x {gpu:g} GPU need {n * gpu:g} GPUs; the Ray cluster has "
                            f"{gpus_total:g} (lower --concurrency or --gpus-per-model-worker)")
    else:
        gpu = 0.0
        n = concurrency or max(1, int(cpus_total // cpu if cpu > 0 else cpus_total))
    if cpus_total > 0 and model_stage and n * cpu > cpus_total:
        # Floor to 1/100 CPU so that n actors always fit, whatever the rounding.
        cpu = math.floor(cpus_total / n * 100) / 100
    return StagePlan("actors" if model_stage else "tasks", max(1, n), cpu, gpu)


def _process_batch(holder: list, batch: list) -> list:
    """Run one batch in a Ray worker. The builder comes by reference (inside a list, so Ray passes the
    reference itself) and is unpickled and set up once per worker process, not once per batch; a
    restarted actor is a new process and sets up again on its first batch."""
    global _WORKER_BUILDER
    import ray

    ref = holder[0]
    try:
        if _WORKER_BUILDER is None or _WORKER_BUILDER[0] != ref.hex():
            _WORKER_BUILDER = None  # let a previous build's builder go before loading this one
            from vlmforge.executors.memory import tune_allocator

            tune_allocator()
            builder = ray.get(ref)
            builder.setup()
            _WORKER_BUILDER = (ref.hex(), builder)
        return finish_results(_WORKER_BUILDER[1].process(batch))
    except Exception as e:
        error = sendable(e)
        if error is e:
            raise
        raise error from e


class _BuilderActor:
    """One model worker of an actor pool: a process that keeps its set-up builder between batches.
    It takes no constructor arguments, so Ray can always restart it."""

    def process(self, holder: list, batch: list) -> list:
        return _process_batch(holder, batch)


class RayExecutor:
    """Runs a builder on Ray. `address`: None starts a local instance (or joins RAY_ADDRESS); `auto`
    joins the cluster started on this machine with `ray start`; `host:port` or `ray://host:port` a remote one.

    Joins an already initialised Ray session when there is one (and leaves it running); otherwise
    connects or starts one for the build and shuts it down afterwards."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        concurrency: int | None = None,
        gpus_per_model_worker: float | None = None,
        max_retries: int = 3,
    ):
        check_workers(workers)
        if concurrency is not None and concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if gpus_per_model_worker is not None and gpus_per_model_worker < 0:
            raise UserError("--gpus-per-model-worker must be 0 or more")
        self.address = address
        joining = address or os.environ.get("RAY_ADDRESS")
        if joining:
            check_address(joining, "--ray-address" if address else "RAY_ADDRESS")
            check_reachable(joining)  # here, before a build writes anything
            check_token(joining)
        # --workers N > 1 with the ray executor means N workers, unless --concurrency says otherwise.
        self.concurrency = concurrency or (workers if workers > 1 else None)
        self.gpus_per_model_worker = gpus_per_model_worker
        self.max_retries = max_retries
        self.node_loss_grace_s = NODE_LOSS_GRACE_S
        self.plan: StagePlan | None = None  # the last build's plan, for reports and tests
        self._started = False
        self._nodes_at_start: dict[str, str] = {}  # node id -> address, of the nodes alive at the start
        self._short_since: float | None = None  # since when the cluster cannot hold one worker
        self._fits_at_start = True

    def _connect(self) -> bool:
        """Initialise Ray unless already done. Returns True when this executor started the session."""
        import ray

        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_AUTH_ON_NOTICE)
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
        if self.address or os.environ.get("RAY_ADDRESS"):
            # Ship this driver's vlmforge to every worker: all nodes then run the same code, which
            # byte-identical output needs. Its dependencies must be installed on every node.
            import vlmforge

            kwargs["runtime_env"] = {"py_modules": [str(Path(vlmforge.__file__).parent)]}
        # No address: a fresh local instance (not whatever `ray start` left behind), unless RAY_ADDRESS says.
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise UserError(
                f"cannot reach the Ray cluster at {address!r}: {e}. Check the address that `ray start --head` "
                "printed; if the cluster uses token authentication (Ray's default), set RAY_AUTH_MODE=token and "
                "give its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            ) from None
        return True

    def map_batches(self, builder: "Builder", tasks: Iterable[tuple[int, list]]) -> Iterator[tuple[int, int, list]]:
        """For each `(first_index, batch)`, yields `(first_index, len(batch), results)` in order."""
        import ray

        started = self._started = self._connect()
        declared = declared_resources(builder)
        cluster = ray.cluster_resources()
        self.plan = plan = plan_stage(declared, is_model_stage(builder, declared), cluster,
                                      self.concurrency, self.gpus_per_model_worker)
        self._nodes_at_start = _alive_nodes()
        self._short_since = None
        self._fits_at_start = not _short(plan, cluster)  # else nodes may be on their way (an autoscaler)
        holder = [ray.put(builder)]  # wrapped so that Ray passes the reference, not a copy per call
        actors: list = []
        try:
            if plan.mode == "actors":
                actor_cls = ray.remote(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=self.max_retries,
                                       max_task_retries=self.max_retries)(_BuilderActor)
                actors = [actor_cls.remote() for _ in range(plan.concurrency)]
                submit = self._actor_submitter(actors, holder)
            else:
                remote = ray.remote(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_retries=self.max_retries,
                                    retry_exceptions=False)(_process_batch)

                def submit(batch: list):
                    return remote.remote(holder, batch)

            pending: deque[tuple[int, int, Any]] = deque()
            for first, batch in tasks:
                pending.append((first, len(batch), submit(batch)))
                if len(pending) >= 2 * plan.concurrency:
                    yield self._result(pending.popleft())
            while pending:
                yield self._result(pending.popleft())
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()

    @staticmethod
    def _actor_submitter(actors: list, holder: list):
        """Send each batch to the actor with the fewest unfinished batches (ties: the first)."""
        import ray

        queues: list[list] = [[] for _ in actors]

        def submit(batch: list):
            outstanding = [ref for q in queues for ref in q]
            if outstanding:
                done, _ = ray.wait(outstanding, num_returns=len(outstanding), timeout=0, fetch_local=False)
                finished = {ref.hex() for ref in done}
                for q in queues:
                    q[:] = [ref for ref in q if ref.hex() not in finished]
            i = min(range(len(actors)), key=lambda j: len(queues[j]))
            ref = actors[i].process.remote(holder, batch)
            queues[i].append(ref)
            return ref

        return submit

    def _result(self, item: tuple[int, int, Any]) -> tuple[int, int, list]:
        import ray
        from ray.exceptions import (ActorUnavailableError, LocalRayletDiedError, NodeDiedError, ObjectLostError,
                                    RayActorError, RayTaskError, WorkerCrashedError)

        first, n, ref = item
        try:
            while not ray.wait([ref], timeout=POLL_S, fetch_local=False)[0]:
                self._check_capacity(first, n)
            return first, n, ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise e.cause from None  # one line on the CLI, as with the local executor
            raise
        except (LocalRayletDiedError, NodeDiedError) as e:
            raise self._cluster_down(first, n, type(e).__name__) from None
        except ObjectLostError as e:  # the node that held the result went down, or its owner lost it
            if self._started or self._lost_nodes(NODE_NOTICE_S):
                raise self._cluster_down(first, n, type(e).__name__) from None
            raise BuildError(f"Ray lost the result of inputs {first}-{first + n - 1} ({type(e).__name__}) with every "
                             "node still up; complete shards are kept: rerun the same command to resume") from None
        except (RayActorError, WorkerCrashedError) as e:
            # An actor out of reach may be on a node that went down: the cluster notices within seconds.
            unreachable = isinstance(e, ActorUnavailableError)
            if self._lost_nodes(NODE_NOTICE_S if unreachable else 0):
                raise self._cluster_down(first, n, type(e).__name__) from None
            raise BuildError(
                f"a Ray worker {'could not be reached' if unreachable else 'died'} on the batch of inputs "
                f"{first}-{first + n - 1} and stayed down after {self.max_retries} "
                f"{'retries' if unreachable else 'restarts'} ({type(e).__name__}); complete shards are kept: "
                "rerun the same command to resume"
            ) from None

    def _check_capacity(self, first: int, n: int) -> None:
        """Stop when the cluster cannot hold one worker of the plan for `node_loss_grace_s`: Ray keeps
        the batch waiting for a node with the resources, for ever."""
        import time

        import ray

        plan = self.plan
        assert plan is not None
        try:
            have = ray.cluster_resources()  # the alive nodes' totals
        except Exception:
            have = {}
        if not self._fits_at_start or not _short(plan, have):
            self._short_since = None
        elif self._short_since is None:
            self._short_since = time.monotonic()
        elif time.monotonic() - self._short_since >= self.node_loss_grace_s:
            raise self._cluster_down(first, n, f"no node left with the {_needs(plan)} a worker needs, "
                                                f"for {self.node_loss_grace_s:g} s")

    def _lost_nodes(self, wait_s: float = 0) -> list[str]:
        """Addresses of the nodes alive at the start of the build that are not now (asked again for up to
        `wait_s` while none is)."""
        import time

        deadline = time.monotonic() + wait_s
        while True:
            try:
                alive = _alive_nodes()
            except Exception:
                return list(self._nodes_at_start.values()) or ["?"]
            lost = [addr for node, addr in self._nodes_at_start.items() if node not in alive]
            if lost or time.monotonic() >= deadline:
                return lost
            time.sleep(POLL_S)

    def _cluster_down(self, first: int, n: int, why: str) -> BuildError:
        lost = self._lost_nodes()
        if self._started:
            what = "the local Ray instance this build started went down"
            then = "rerun the same command to resume"
        else:
            what = "the Ray cluster went down"
            then = "once the cluster is back (`ray start` on its nodes), rerun the same command to resume"
        if lost and len(self._nodes_at_start) == 1:
            what += f" (its node at {lost[0]} lost)"
        elif lost:
            what += f" ({len(lost)} of its {len(self._nodes_at_start)} nodes lost: {', '.join(sorted(set(lost)))})"
        return BuildError(f"{what} while inputs {first}-{first + n - 1} were running ({why}); complete shards are "
                          f"kept: {then}")


def _alive_nodes() -> dict[str, str]:
    import ray

    return {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in ray.nodes() if node.get("Alive")}


def _short(plan: StagePlan, resources: dict[str, float]) -> bool:
    """Whether `resources` cannot hold one worker of `plan`."""
    return resources.get("CPU", 0) < plan.num_cpus or resources.get("GPU", 0) < plan.num_gpus


def _needs(plan: StagePlan) -> str:
    needs = [f"{plan.num_cpus:g} CPU"] + ([f"{plan.num_gpus:g} GPU"] if plan.num_gpus else [])
    return " and ".join(needs)
