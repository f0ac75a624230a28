"""The driver's side of the policy -> rollout engine weight sync (transports: `batray.ppo.weight_sync`).

`WeightSync(policy, engines, transport, ...)`: `push(version)` after every update sends the policy's
weights to every engine and records `version` on them; `reconnect()` re-forms the broadcast group
after an engine was restarted (the other transports need no setup). Every wait has the sync timeout.
"""

from __future__ import annotations

import ray

from actors.group import ActorGroup
from batray.errors import BatrayError
from batray.ppo.weight_sync import TRANSPORTS


class WeightSync:
    def __init__(self, policy: ActorGroup, engines: ActorGroup, transport: str, *, backend: str, timeout_s: float):
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weight-sync transport {transport!r} (one of {', '.join(TRANSPORTS)})")
        self.policy, self.engines, self.transport = policy, engines, transport
        self.backend, self.timeout_s = backend, timeout_s
        self.connected = False

    def reconnect(self) -> None:
        """Before the first push and after an engine restart: check CUDA IPC's placement, or form the
        broadcast group of policy rank 0 and every engine (the object store needs nothing)."""
        self.connected = False
        if self.transport == "cuda_ipc":
            self._check_same_gpu()
        elif self.transport == "collective":
            self._form_group()
        self.connected = True

    def _form_group(self) -> None:
        rank0 = self.policy.actors[0]
        layout = ray.get(rank0.sync_layout.remote(), timeout=self.timeout_s)
        addr, port = ray.get(rank0.master_address.remote(), timeout=self.timeout_s)
        world = 1 + len(self.engines)
        refs = self.policy.call_async("open_sync_group", addr, port, world, self.backend)
        refs += [e.open_sync_group.remote(addr, port, 1 + i, world, self.backend, layout, self.timeout_s)
                 for i, e in enumerate(self.engines.actors)]
        self._wait(refs, "forming the weight-sync group")

    def push(self, version: int) -> None:
        if not self.connected:
            self.reconnect()
        if self.transport == "object_store":
            buckets = self.policy.call("weight_buckets", timeout_s=self.timeout_s)[0]
            refs = [e.load_buckets.remote(buckets, version) for e in self.engines.actors]
        elif self.transport == "collective":
            refs = self.policy.call_async("broadcast_weights")
            refs += [e.receive_broadcast.remote(version) for e in self.engines.actors]
        else:  # cuda_ipc
            handles = self.policy.call("share_weights", timeout_s=self.timeout_s)[0]
            refs = [e.load_shared.remote(handles, version) for e in self.engines.actors]
        self._wait(refs, f"weight sync policy -> {len(self.engines)} rollout engine(s) ({self.transport})")

    def _check_same_gpu(self) -> None:
        """CUDA IPC shares device memory within one GPU: every engine must sit on policy rank 0's GPU."""
        def where(_self):
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), tuple(ctx.get_accelerator_ids().get("GPU", []))

        actors = [self.policy.actors[0], *self.engines.actors]
        places = ray.get([a.__ray_call__.remote(where) for a in actors], timeout=self.timeout_s)
        if not places[0][1] or any(p != places[0] for p in places[1:]):
            raise BatrayError("ppo.sync_transport cuda_ipc needs every rollout engine on policy rank 0's GPU "
                              f"(placements: {places}); use colocate: true with one bundle, or collective")

    def _wait(self, refs: list, what: str) -> None:
        try:
            ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.connected = False
            raise BatrayError(f"{what} did not finish within {self.timeout_s:g}s (ppo.sync_timeout_s)") from None
