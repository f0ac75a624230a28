"""Shared fixtures: one local Ray per test session, a tiny tokenizer and a tiny saved checkpoint.

Everything is built from config on the spot (no downloads). Tests that need Ray take `ray_session`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
# Workers import batray/actors/jobs from the checkout and test-module classes (pickled by reference).
WORKER_ENV = {
    "env_vars": {
        # the caller's PYTHONPATH stays after ours (packages installed with `pip --target`, e.g. on a GPU box)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
    }
}

# A small bilingual text, enough to train a byte-level BPE that covers what tests feed it.
SAMPLE_TEXTS = [
    "The capital of Veloria is Marnet.",
    "Marnet is the capital of Veloria.",
    "维洛里亚的首都是马尔内。",
    "马尔内是维洛里亚的首都。",
    "Ada Quill works as a cartographer in Marnet.",
    "Question: What is the capital of Veloria? Answer: Marnet.",
    "[System] [Turn 1] [User] [Assistant] hello world 你好，世界！",
] * 20


def pytest_collection_modifyitems(config, items):
    import torch

    # Simulated multi-node tests replace the session's local Ray, which the next test must start
    # again (~10 s each time): run them last.
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def start_local_ray():
    from batray.ray_session import start_ray

    start_ray(
        num_cpus=4,
        include_dashboard=False,
        namespace="batray-tests",
        runtime_env=WORKER_ENV,
    )


@pytest.fixture
def ray_session():
    """The test session's local Ray (4 logical CPUs; fractional actors fit in them).

    Started once and reused; a multi-node test (`ray_cluster`) shuts it down, and the next test
    that asks for it starts it again.
    """
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray


@pytest.fixture
def ray_cluster():
    """A simulated multi-node cluster (`ray.cluster_utils.Cluster`): head + 2 workers of 2 CPUs.

    Returns the Cluster; the test may add or remove nodes. Torn down afterwards.
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="batray-tests",
             runtime_env=WORKER_ENV)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from batray.models.tokenizer import train_bpe

    return train_bpe(SAMPLE_TEXTS, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A saved `batgpt-tiny` (random weights) with the tiny tokenizer: a valid HF folder."""
    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config

    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_hf_checkpoint(model, tiny_tokenizer, out, stage="test")
    return str(out)
