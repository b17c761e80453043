"""Run the tiny CPU recipe inside the test process, on one Ray cluster that every run of a test module shares.

Used by `test_tiny_cpu.py` (one node with one logical GPU) and `test_dp_workers.py` (two logical nodes on this
machine, one logical GPU each, for the 2-worker and the 2-node runs). Ray starts once per module: starting it costs
tens of seconds on 2 busy cores, about as much as a 2-step run. A "GPU" here is only a placement token (CPU mode,
`verl_meds.verl.cpu`); verl places one worker per token.

Several logical nodes come from `ray.cluster_utils.Cluster`: every node is its own raylet with its own resources and
node id, all on this machine's address, so verl's resource pool manager sees a real multi-node cluster (one
placement group per node) while torch.distributed still rendezvous over loopback. Such a cluster writes its address
to `<Ray temp dir>/ray_current_cluster`, where any plain `ray.init()` on this machine would find and join it (another
test session's, say); `RAY_TMPDIR` points at a private folder while it runs, so the file, the session folders and
the sockets stay there and the folder is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
NODE_CPUS = 16
"""Logical CPUs per node: verl's task runner, reward, agent-loop and TransferQueue actors each take one."""
NODE_OBJECT_STORE_BYTES = 512 * 1024 * 1024
"""Object store per node of a multi-node cluster (Ray's test clusters default to 150 MiB)."""


@contextlib.contextmanager
def ray_cluster(gpus_per_node: list[int]) -> Iterator[list[str]]:
    """Start Ray in this process with one node per entry of ``gpus_per_node`` (that many logical GPUs each).

    One node is a plain ``ray.init``; more are a ``ray.cluster_utils.Cluster`` that the driver joins. CPU mode
    (``verl_meds.verl.cpu.enable_cpu_mode``) is switched on first, and its environment is the job's runtime env, so
    every worker on every node runs the CPU platform.

    Yields:
        `list[str]`: the Ray node ids, head first.
    """
    import ray

    from verl_meds.verl import cpu

    env = cpu.enable_cpu_mode()
    if ray.is_initialized():
        raise RuntimeError("Ray is already running in this process; a module's cluster must start it itself")
    cluster = None
    ray_tmpdir = os.environ.get("RAY_TMPDIR")
    private_dir = None
    try:
        if len(gpus_per_node) == 1:
            ray.init(
                num_cpus=NODE_CPUS, num_gpus=gpus_per_node[0], runtime_env={"env_vars": env}, include_dashboard=False
            )
        else:
            from ray.cluster_utils import Cluster

            private_dir = tempfile.mkdtemp(prefix="vm", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
            os.environ["RAY_TMPDIR"] = private_dir
            node_args = {"num_cpus": NODE_CPUS, "object_store_memory": NODE_OBJECT_STORE_BYTES}
            cluster = Cluster(
                initialize_head=True,
                head_node_args={**node_args, "num_gpus": gpus_per_node[0], "include_dashboard": False},
            )
            for gpus in gpus_per_node[1:]:
                cluster.add_node(**node_args, num_gpus=gpus)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, runtime_env={"env_vars": env})
        yield [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if private_dir is not None:
            if ray_tmpdir is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = ray_tmpdir
            shutil.rmtree(private_dir, ignore_errors=True)


def compose(method: str, overrides: list[str]):
    """The recipe config ``paper.yaml`` with ``setup=tiny_cpu``, ``method`` and ``overrides`` (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("paper", overrides=["setup=tiny_cpu", f"method={method}", *overrides])


def train(method: str, out: Path, assets: dict[str, Path], steps: int, extra: list[str] = (), attempt: int = 0):
    """One verl run of ``method`` on the tiny CPU setup; returns the per-step metrics it logged.

    Checkpoints (and the ``meds_dump`` file ``analysis.jsonl``) go to ``out/checkpoints``, the metrics to
    ``out/metrics.<attempt>.jsonl``. Validation is off.
    """
    from verl_meds.verl.main import run
    from verl_meds.verl.summary import read_metrics

    out.mkdir(parents=True, exist_ok=True)
    os.environ["VERL_FILE_LOGGER_PATH"] = str(out / f"metrics.{attempt}.jsonl")
    overrides = [
        f"data.train_files={assets['train']}",
        f"data.val_files={assets['val']}",
        f"actor_rollout_ref.model.path={assets['model']}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        *extra,
    ]
    run(compose(method, overrides))
    return read_metrics(str(out))
