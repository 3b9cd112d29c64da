"""Per-process cache: data and model are built once per Ray actor (or process), not per message.

Module-level, so it survives inside each Ray actor between messages (any actor may serve any
site; each builds the shared data once and keeps the tensors of the SITES_KEPT sites it served
last: all of them in a federation of up to that many sites, a bounded share at 10,000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from fedcls.algorithms.models import Classifier, build_model
from fedcls.caching import BoundedCache
from fedcls.data.federated import FederatedData, SiteTensors, data_key, federated_data, site_tensors
from fedcls.data.site_folders import folder_federated_data
from fedcls.schema import Config

_RUNTIMES = BoundedCache(size=4)  # data, model and site tensors per config and device
SITES_KEPT = 128  # site tensors (and continual streams) a runtime keeps, the most recently used


def _site_cache() -> BoundedCache:
    return BoundedCache(size=SITES_KEPT)


@dataclass
class Runtime:
    data: FederatedData
    model: Classifier
    device: torch.device
    sites: BoundedCache = field(default_factory=_site_cache)  # {site id: SiteTensors}
    streams: BoundedCache = field(default_factory=_site_cache)  # {"site:stream key": SiteStream}

    def site(self, site_id: int) -> SiteTensors:
        """Site `site_id`'s tensors on this runtime's device (built on first use; a site not used
        among the last SITES_KEPT is built again, the same tensors: they depend on the config alone)."""
        return self.sites.get_or_build(site_id, lambda: site_tensors(self.data, site_id, self.device))

    def stream(self, cfg: Config, site_id: int):
        """Site `site_id`'s continual stream of experiences (built on first use, kept as site() keeps tensors)."""
        from fedcls.algorithms.continual.streams import site_stream, stream_key

        key = f"{site_id}:{stream_key(cfg)}"
        return self.streams.get_or_build(key, lambda: site_stream(cfg, self.data, site_id, self.device))


def pick_device(cfg: Config) -> torch.device:
    """CUDA when asked for (device=cuda) or allowed (auto, with GPUs per client) and present."""
    wants_gpu = cfg.device == "cuda" or (cfg.device == "auto" and cfg.backend.num_gpus > 0)
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def get_runtime(cfg: Config, device: torch.device | None = None, site_folder: tuple[str, int] | None = None,
                federation: dict | None = None) -> Runtime:
    """The cached runtime for this config's data and model; with `site_folder` (folder, site id),
    a deployed site's own data folder (fedcls.data.site_folders), normalised as the server's
    `federation` description says, instead of a share of the dataset."""
    device = device or pick_device(cfg)
    values = cfg.to_dict()
    data_id = data_key(cfg) if site_folder is None else [site_folder, cfg.seed, values["data"], federation]
    key = json.dumps([data_id, values["model"], str(device), str(torch.get_default_dtype())], sort_keys=True)
    return _RUNTIMES.get_or_build(key, lambda: _build_runtime(cfg, device, site_folder, federation))


def _build_runtime(cfg: Config, device: torch.device, site_folder: tuple[str, int] | None,
                   federation: dict | None) -> Runtime:
    data = federated_data(cfg) if site_folder is None else _folder_data(cfg, *site_folder, federation)
    model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes).to(device)
    return Runtime(data, model, device)


def _folder_data(cfg: Config, folder: str, site: int, federation: dict | None) -> FederatedData:
    if federation is None:
        raise ValueError("this server sent no federation data description: run a fedcls ServerApp "
                         "of the same version as the sites")
    return folder_federated_data(folder, site, federation, cfg)

