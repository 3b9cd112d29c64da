"""The Ray actor that runs the sites' ClientApp in a simulation: Flower's ``ClientAppActor``,
defined where importing it does not import ``flwr.simulation``.

Flower 1.42's actor class lives in ``flwr.simulation.ray_transport.ray_actor``; importing it runs
``flwr.simulation``'s package init, which imports the simulation runtime with its SQL link state,
SQLAlchemy, Alembic and FastAPI: none of which a client actor uses, imported by every actor of every
run (benchmarks/startup.py prints the import times of both). This class is Flower's, method for
method (``run`` and ``terminate``, as Flower's actor pool calls them); fedcls's actor pool patch
(fedcls.engine.actor_reserve.install) makes Flower's pool create it.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError


@ray.remote
class SiteActor:
    """Runs a ClientApp on a message, as Flower's ClientAppActor does."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn, message, cid: str, context):
        """The ClientApp's reply to `message` and its updated `context` (Flower's contract: a
        failing app raises ClientAppException, a failing load LoadClientAppError)."""
        try:
            out_message = client_app_fn()(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        ray.actor.exit_actor()
