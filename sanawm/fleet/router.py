"""Sticky routing: every call carrying a session id goes to the replica that holds that session.

Ray Serve's model multiplexing is not sticky (measured: bench/results/fleet-cpu.json), so the engine
deployment uses this request router (Ray Serve's request-router API). It lives in the caller's process
(the ingress), keeps ``session id -> replica`` and places a new session on the candidate replica holding
the fewest sessions. When a replica dies or leaves (drain), its sessions are placed again on the next
call; the replica that receives them restores them from their migration snapshots.

The table is per caller: the fleet runs one ingress replica, so it is the whole truth. Calls without a
session id (stats) go to any replica.
"""

from __future__ import annotations

from collections import Counter

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

FORGET_METHODS = ("close", "retire")  # after these the session holds no replica


class SessionRouter(RequestRouter):
    def initialize_state(self, **kwargs):
        self.placement: dict[str, ReplicaID] = {}

    def sessions_on(self, replica_ids) -> Counter:
        live = set(replica_ids)
        return Counter(r for r in self.placement.values() if r in live)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        sid = pending_request.metadata.session_id if pending_request is not None else ""
        if not sid or not candidate_replicas:
            return [candidate_replicas]
        by_id = {r.replica_id: r for r in candidate_replicas}
        held = self.placement.get(sid)
        if held in by_id:
            chosen = by_id[held]
        else:  # new, or its replica died or drained: the least loaded one (ties: a stable order)
            load = self.sessions_on(by_id)
            chosen = min(candidate_replicas, key=lambda r: (load[r.replica_id], r.replica_id.unique_id))
            self.placement[sid] = chosen.replica_id
        if pending_request.metadata.call_method in FORGET_METHODS:
            self.placement.pop(sid, None)
        return [[chosen]]

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        for sid in [s for s, r in self.placement.items() if r == replica_id]:
            del self.placement[sid]
