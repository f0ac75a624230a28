"""The tiny recipe on a simulated multi-node cluster (`ray.cluster_utils.Cluster`), issue 10.

Every stage runs against a head and five 2-CPU worker nodes; PPO's roles get their own placement
groups (`ppo.colocate=false`) sized so that the policy, the critic and the rollout engine each take a
whole node. After PPO's second step the rollout engine's node is removed (all its processes killed,
as when a machine is lost). Ray reschedules the engine's placement-group bundle on a free node and
restarts the engine (`ppo.rollout.max_restarts`); the PPO driver notices on the next generation,
waits for it, re-syncs the policy's weights and redoes the step. The run still finishes, and eval
scores the PPO model.

Opt-in (`pytest -m slow tests/test_recipe_cluster.py`): six raylets and every stage's Ray Train
launch take ~5 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, WORKER_ENV

SHORT = [
    "grow.steps_per_phase=6", "pretrain.log_every=2", "pretrain.eval_every=6", "pretrain.ckpt_every=100",
    "pretrain.optim.warmup_steps=1", "sft.optim.warmup_steps=1", "reward.optim.warmup_steps=1",
    "sft.max_steps=6", "sft.log_every=2", "sft.eval_every=6", "sft.ckpt_every=100",
    "reward.max_steps=6", "reward.log_every=2", "reward.eval_every=6", "reward.ckpt_every=100",
    "pairs.max_prompts=16", "eval.limit=2",
    "ray.num_cpus=12", "ppo.steps=5", "ppo.ckpt_every=2", "ppo.colocate=false",
    "ppo.policy.num_cpus=2", "ppo.critic.num_cpus=2", "ppo.rollout.num_cpus=2",
    "ppo.reference.num_cpus=1", "ppo.reward.num_cpus=1",
    "ppo.rollout.max_restarts=2", "ppo.reward.max_restarts=2",
]


@pytest.mark.slow
def test_tiny_recipe_on_six_nodes_survives_losing_the_rollout_node(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from batray import hooks
    from batray.metrics import read_metrics
    from jobs.run import main

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(5)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="batray-tests", runtime_env=WORKER_ENV)
    seen: dict = {}

    def lose_the_rollout_node(*, step, roles):
        if step == 2 and "removed" not in seen:
            engine = roles["rollout"].actors[0]
            node_of = lambda actor: ray.get(actor.__ray_call__.remote(  # noqa: E731
                lambda _: ray.get_runtime_context().get_node_id()))
            seen["roles"] = {role: sorted({node_of(a) for a in roles[role].actors})
                             for role in ("policy", "critic", "reference", "reward", "rollout")}
            rollout_node = node_of(engine)
            others = {n for role, nodes in seen["roles"].items() if role != "rollout" for n in nodes}
            assert rollout_node not in others, seen["roles"]  # the engine has its node to itself
            cluster.remove_node(next(w for w in workers if w.node_id == rollout_node))
            seen["removed"] = rollout_node

    try:
        with hooks.on(hooks.PPO_STEP_DONE, lose_the_rollout_node):
            rc = main([str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(tmp_path), *SHORT])
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert rc == 0
    # roles were spread: policy, critic and rollout on three different nodes
    assert len({n for role in ("policy", "critic", "rollout") for n in seen["roles"][role]}) == 3
    rows = read_metrics(tmp_path / "ppo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["actor_recoveries"] >= 1  # step 3 found the engine gone, waited, re-synced, redid it
    assert all(r["samples"] == 16 for r in rows)  # no sample lost
    state = json.loads((tmp_path / "run_state.json").read_text())
    stages = state.get("stages", state)
    assert all(stages[s]["status"] == "done" for s in ("grow", "sft", "reward", "ppo", "eval"))
    assert Path(tmp_path, "eval", "tables.md").read_text().count("ppo") >= 1
