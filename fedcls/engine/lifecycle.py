"""How a run ends: at Ctrl-C, the round loop's grid stops it at its next call (``StoppableGrid``;
fedcls.errors.ctrl_c_deferred sets the flag), and the Ray processes a run starts end with its driver
(``ray_dies_with_driver``). Used by both executors (fedcls.engine.simulation and cohort_grid)."""

from __future__ import annotations

import os
import threading

GRID_CALLS = ("get_node_ids", "push_messages", "pull_messages", "send_and_receive")
RAY_RECONNECT_S = "5"  # how long Ray processes started here wait for a vanished GCS before exiting


def ray_dies_with_driver(address: str | None) -> None:
    """Make the Ray processes a local run starts (its GCS, raylet, agents) end within seconds of a
    killed driver: by default Ray's dashboard and runtime-env agents wait 60 s for the dead GCS
    (measured: 63 s after kill -9; 8 s with this). Set before Ray starts; not when attaching to an
    existing cluster (``address``), whose GCS may restart and come back."""
    if not address:
        os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", RAY_RECONNECT_S)


def ray_started(address: str | None) -> str:
    """What the console says once Ray is up: the cluster attached to, or this machine's CPUs/GPUs."""
    import ray

    res = ray.cluster_resources()
    where = f"attached to the cluster at {address}" if address else "started on this machine"
    gpus = f", {res['GPU']:.0f} GPUs" if res.get("GPU") else ""
    return f"{where}: {res.get('CPU', 0):.0f} CPUs{gpus}"


class ServerStopped(KeyboardInterrupt):
    """Raised in the ServerApp thread at its next grid call once the run was stopped."""


class StoppableGrid:
    """A Grid whose calls raise ServerStopped once `stop` is set (the module docstring says why)."""

    def __init__(self, grid, stop: threading.Event, on_replies=None):
        """`on_replies(n)`: told how many sites have answered a send_and_receive so far."""
        self._grid, self._stop, self._on_replies = grid, stop, on_replies

    def __getattr__(self, name):
        attr = getattr(self._grid, name)
        if name not in GRID_CALLS:
            return attr
        if name == "send_and_receive" and hasattr(self._grid, "push_messages"):
            attr = self._send_and_receive

        def checked(*args, **kwargs):
            if self._stop.is_set():
                raise ServerStopped
            return attr(*args, **kwargs)

        return checked

    def _send_and_receive(self, messages, timeout: float | None = None):
        """Flower's, except that its waits for replies pull through this grid (and so stop)."""
        from fedcls.apps.federation import push_and_pull

        return push_and_pull(self, messages, timeout, self._on_replies)
