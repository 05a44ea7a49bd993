"""What elasticity costs: the render nodes' time up, as Ray reports it (from a node's start
to its release), against the time workers were busy on them, and how long a job waited for
its first task on a node that joined for it.

:func:`node_spans` asks Ray; :func:`summary` is pure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSpan:
    """When a Ray node was up: ``start`` and ``end`` in seconds since the epoch (``end``
    None while it is up); ``renders``: it offers CPUs or GPUs (the head of an elastic cluster
    has none)."""

    start: float
    end: float | None
    renders: bool


def node_spans() -> dict[str, NodeSpan]:
    """Every node the connected Ray cluster has had, by node id (hex), as its control store
    (GCS) reports it; empty when it cannot be told."""
    try:
        import ray

        client = ray._private.worker.global_worker.gcs_client  # noqa: SLF001 - Ray's own times
        spans = {}
        for node_id, info in client.get_all_node_info().items():
            resources = dict(getattr(info, "resources_total", {}) or {})
            spans[node_id.hex() if hasattr(node_id, "hex") else str(node_id)] = NodeSpan(
                info.start_time_ms / 1000.0, info.end_time_ms / 1000.0 or None,
                bool(resources.get("CPU") or resources.get("GPU")))
        return spans
    except Exception as exc:  # an older or newer Ray: the report goes without
        logger.debug("cannot read the nodes' times from Ray: %s", exc)
        return {}


def summary(spans: Mapping[str, NodeSpan], tasks: Iterable[Mapping[str, Any]],
            started: float, ended: float) -> dict[str, Any]:
    """What the render nodes that served a job cost over its time (``started`` to
    ``ended``, seconds since the epoch), from ``tasks`` (its calls: ``node``, ``started``,
    ``finished``). Pure.

    Returns:
        ``node_seconds``: the nodes' time up within the job's; ``busy_seconds``: its calls'
        time on them; ``busy_share``: the one over the other; ``nodes``: how many;
        ``new_nodes``: those that started after the job; ``first_task_on_new_node``: seconds
        from the job's start to its first call on one of those (None: none).
    """
    calls = [t for t in tasks if t.get("node") and t.get("started") and t.get("finished")]
    used = {str(t["node"]) for t in calls}
    node_seconds = 0.0
    for node in used:
        span = spans.get(node)
        if span is None:
            continue
        node_seconds += max(0.0, min(span.end or ended, ended) - max(span.start, started))
    busy = sum(float(t["finished"]) - float(t["started"]) for t in calls)
    new = {n for n in used if n in spans and spans[n].start >= started}
    firsts = [float(t["started"]) - started for t in calls if str(t["node"]) in new]
    return {"node_seconds": round(node_seconds, 3), "busy_seconds": round(busy, 3),
            "busy_share": round(busy / node_seconds, 4) if node_seconds > 0 else None,
            "nodes": len(used), "new_nodes": len(new),
            "first_task_on_new_node": round(min(firsts), 3) if firsts else None}


def fake_cloud(node_cpus: int = 1, max_nodes: int = 3, idle_seconds: float = 15.0,
               head_cpus: int = 0, more_types: dict[str, dict[str, Any]] | None = None) -> Any:
    """Start Ray's own autoscaler on this machine with its fake multi-node provider (nodes
    are local processes): a head with ``head_cpus`` CPUs and one render node type of
    ``node_cpus`` CPUs, 0 to ``max_nodes`` nodes, idle ones removed after ``idle_seconds``;
    ``more_types``: other node types, ``{name: {"resources": {...}, "max_workers": N}}``.
    Connect with ``address="auto"``; stop it with its ``shutdown()``. For trying elasticity
    and for tests.

    Its start runs ``ray stop --force``: every Ray of this machine stops first.
    """
    from ray.cluster_utils import AutoscalingCluster

    class FakeCloud(AutoscalingCluster):  # type: ignore[misc]
        """Ray's autoscaling test cluster with the fake provider's settings given here (the
        wheel lacks the ``example.yaml`` it reads them from), as Ray's repository has
        them."""

        def _generate_config(self, head_resources: dict[str, Any],
                             worker_node_types: dict[str, Any], autoscaler_v2: bool = False,
                             **config_kwargs: Any) -> dict[str, Any]:
            config: dict[str, Any] = {
                "cluster_name": "renderfarm-fake",
                "max_workers": max_nodes + sum(int(k.get("max_workers", 1))
                                               for k in (more_types or {}).values()),
                "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                             "disable_node_updaters": True,
                             "disable_launch_config_check": True},
                "available_node_types": {
                    **worker_node_types,
                    "ray.head.default": {"resources": head_resources, "node_config": {},
                                         "max_workers": 0}},
                "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
                "idle_timeout_minutes": idle_seconds / 60, "docker": {},
                "initialization_commands": [], "setup_commands": [],
                "head_setup_commands": [], "worker_setup_commands": [],
                "head_start_ray_commands": [], "worker_start_ray_commands": [],
                "file_mounts": {}, "cluster_synced_files": [],
                "file_mounts_sync_continuously": False, "rsync_exclude": [],
                "rsync_filter": []}
            config.update(config_kwargs)
            return config

    cloud = FakeCloud(
        head_resources={"CPU": head_cpus},
        worker_node_types={"render": {"resources": {"CPU": node_cpus,
                                                    "object_store_memory": 150 * 1024**2},
                                      "node_config": {}, "min_workers": 0,
                                      "max_workers": max_nodes},
                           **{name: {"node_config": {}, "min_workers": 0, **kind,
                                     "resources": {"object_store_memory": 150 * 1024**2,
                                                   **kind.get("resources", {})}}
                              for name, kind in (more_types or {}).items()}})
    cloud.start()
    return cloud


def render_nodes() -> int:
    """The connected cluster's alive nodes that can render (with CPUs or GPUs)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")
               and (n.get("Resources", {}).get("CPU") or n.get("Resources", {}).get("GPU")))
