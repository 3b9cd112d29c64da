"""Ray and the sites' actors start while the driver still imports PyTorch and builds the data.

Serially, a cold run on 2 cores spent ~4 s importing (mostly PyTorch), then ~6 s in ray.init (the
GCS, raylet and Ray's agents start as processes), then ~5 s per client actor importing Flower,
PyTorch and fedcls: ~21 s from the command to round 1 (benchmarks/startup.py). Here ``begin`` starts
a thread right after the config is read that starts Ray (as Flower's backend would: same init
arguments) and warm client actors (fedcls.engine.actor_reserve: imports, data and model built); the
Ray processes and the actors' work then run on the other cores while the main thread imports and builds data. Flower's backend
finds Ray initialised and its pool takes the warm actors.

The thread lives as long as the process: Ray starts its processes with PR_SET_PDEATHSIG, which on
Linux fires when the *thread* that started them ends (seen here: the GCS died as soon as a thread
that had run ray.init returned).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

_up = threading.Event()
_lock = threading.Lock()
_state: dict = {}  # "thread"; "error": what stopped the start; "abandoned": the run failed meanwhile


def init_kwargs(address: str | None, verbose: bool, env: dict | None = None) -> dict:
    """ray.init's arguments as Flower's Ray backend passes them (fedcls's backend_config), so that
    a Ray started here is the one Flower would have started."""
    pythonpath = os.pathsep.join(sys.path)  # as Flower's backend does, so that actors import fedcls
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    kwargs = {"include_dashboard": False, "log_to_driver": verbose,
              "logging_level": logging.INFO if verbose else logging.WARNING,
              "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath, **(env or {})}}}
    return {**kwargs, "address": address} if address else kwargs


def begin(cfg) -> None:
    """Start Ray (or attach to backend.ray_address) and warm client actors in the background, for a
    run on Flower's executor in a process without Ray yet; no-op otherwise."""
    if cfg.backend.executor != "clientapp" or "thread" in _state or "ray" in sys.modules and _ray_up():
        return
    from fedcls.engine.lifecycle import ray_dies_with_driver

    ray_dies_with_driver(cfg.backend.ray_address)
    resources = {"num_cpus": cfg.backend.num_cpus, "num_gpus": cfg.backend.num_gpus}
    args = init_kwargs(cfg.backend.ray_address, cfg.verbose)
    thread = threading.Thread(target=_start, args=(args, resources, cfg), name="fedcls-early-ray", daemon=True)
    _state["thread"] = thread
    thread.start()


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def _not_sigterm_notice(record: logging.LogRecord) -> bool:
    """Drop ray.init's notice that it set no SIGTERM handler off the main thread: the default
    action (the process ends, and Ray with it) is what a run wants."""
    return "SIGTERM handler is not set" not in record.getMessage()


def _start(args: dict, resources: dict, cfg) -> None:
    try:
        import ray

        logging.getLogger("ray._private.worker").addFilter(_not_sigterm_notice)
        ray.init(**args)
        from fedcls.engine import actor_reserve

        try:
            actor_reserve.warm(resources, cfg=cfg)
        except ValueError:
            pass  # no actor fits these resources: Flower's pool says so, with its message
    except BaseException as err:  # noqa: BLE001 - handed to the main thread by wait()
        _state["error"] = err
    with _lock:
        _up.set()
        abandoned = _state.get("abandoned")
    if abandoned:  # the run failed while Ray was starting (fedcls.simulate had nothing to wait for)
        _shutdown()
    threading.Event().wait()  # see the module docstring: Ray's processes end with this thread


def wait() -> bool:
    """Block until the Ray started by ``begin`` is up (raising what stopped it); False when
    ``begin`` started nothing."""
    if "thread" not in _state:
        return False
    _up.wait()
    if "error" in _state:
        raise _state.pop("error")
    return True


def finish(wait: bool = True) -> None:
    """Shut down a Ray that ``begin`` started and that is still up (the run failed before Flower
    could, e.g. on missing data); then ``begin`` may start again (in-process callers, tests).
    ``wait=False``: if Ray is still starting, return at once (the user's error message is not held
    up by Ray's start) and let the starting thread shut it down once up, or the process end it."""
    if "thread" not in _state:
        return
    with _lock:
        if not wait and not _up.is_set():
            _state["abandoned"] = True
            return
    _up.wait()
    _shutdown()


def _shutdown() -> None:
    import ray

    from fedcls.engine import actor_reserve

    actor_reserve.release()
    if ray.is_initialized():
        ray.shutdown()
    _state.clear()
    _up.clear()
