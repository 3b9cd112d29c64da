"""The run config as it travels to the sites with every message (ConfigRecord key ``fedcls-config``):
the config's plain dict, plus what the server adds -- the federation's data description (a deployed
site normalises its own folder with it) and, in a simulation that checkpoints, where the clients
keep their state. A site needs no copy of the server's config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from fedcls.data.site_folders import FEDERATION_KEY
from fedcls.outputs.checkpoint import PAYLOAD_KEY
from fedcls.schema import Config

CONFIG_KEY = "fedcls-config"  # ConfigRecord entry holding the payload as JSON


@dataclass(frozen=True)
class Payload:
    cfg: Config
    federation: dict | None = None  # fedcls.data.site_folders.federation_info of the server's dataset
    client_state: dict | None = None  # {"dir": ..., "upto": last checkpointed round} (fedcls.outputs.checkpoint)

    def to_json(self) -> str:
        extras = {FEDERATION_KEY: self.federation, PAYLOAD_KEY: self.client_state}
        return json.dumps({**self.cfg.to_dict(), **{k: v for k, v in extras.items() if v is not None}})


@lru_cache(maxsize=8)  # every client of a round (a cohort: many per actor) gets the same text
def read_payload(text: str) -> Payload:
    """The payload of a message's ``fedcls-config`` entry (treat it as read-only: it is shared)."""
    values = json.loads(text)
    federation, client_state = values.pop(FEDERATION_KEY, None), values.pop(PAYLOAD_KEY, None)
    return Payload(Config.from_dict(values), federation, client_state)
