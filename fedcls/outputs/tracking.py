"""A run's curves in the experiment trackers researchers use, written as the rounds end, next to
metrics.jsonl (which stays the record every report reads):

- TensorBoard (``tracking.tensorboard``, on by default): event files in <run folder>/tensorboard,
  written with torch's own SummaryWriter; ``tensorboard --logdir results/runs`` shows every run.
- MLflow (``tracking.mlflow``, off by default; needs ``pip install mlflow-skinny``): one MLflow run
  per fedcls run in ``tracking.mlflow_uri`` (a local ``file:`` store by default, no server needed).

Both get the same scalars per round (SCALARS below, each site's accuracy/loss under site/<id>/...),
the config as hyperparameters and the final metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fedcls.errors import ConfigError
from fedcls.schema import Config

TENSORBOARD_DIR = "tensorboard"


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row as tracker scalars: global/, sites/ (the sites' evaluation of the
    global model, mean/min/max), site/<id>/, train/, run/ (failures, seconds), traffic/ (megabytes
    to and from the sites this round) and the extensions' numbers (continual average accuracy and
    forgetting, domain target accuracy)."""
    out = {"global/accuracy": row["accuracy"], "global/loss": row["loss"],
           "run/failures": len(row.get("failures", [])), "run/seconds": row.get("seconds", 0.0)}
    out.update({f"train/{k}": v for k, v in row.get("train", {}).items() if _number(v)})
    out.update({f"sites/{k}": v for k, v in row.get("clients", {}).items() if _number(v)})
    for site, metrics in row.get("sites", {}).items():
        out.update({f"site/{site}/{k}": v for k, v in metrics.items() if k in ("accuracy", "loss")})
    out.update({f"traffic/{way}_mb": n / 1e6 for way, n in row.get("bytes", {}).items()})
    for key in ("average_accuracy", "forgetting", "bwt", "target_accuracy"):
        if _number(row.get(key)):
            out[f"extra/{key}"] = row[key]
    return {k: float(v) for k, v in out.items() if _number(v)}


def hparams(cfg: Config) -> dict[str, str | float | int | bool]:
    """The config flattened to dotted keys with scalar values (lists and None as text), for hparams views."""
    def flat(node: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else
                       {f"{prefix}{k}": v if isinstance(v, (int, float, str, bool)) else str(v)})
        return out

    return flat(cfg.to_dict())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class TensorBoardTracker:
    """torch.utils.tensorboard's SummaryWriter in <run folder>/tensorboard; a resumed run drops
    what an earlier process wrote after its checkpoint (purge_step)."""

    def __init__(self, run_dir: Path, cfg: Config, first_round: int = 1):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
                                    purge_step=first_round if first_round > 1 else None)
        if first_round == 1:  # the config as config.yaml holds it
            self.writer.add_text("config", "```\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```", 0)

    def round(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["round"])
        self.writer.flush()

    def finish(self, summary: dict) -> None:
        final = {f"final/{k}": float(summary[k]) for k in ("final_accuracy", "best_accuracy")
                 if _number(summary.get(k))}
        if summary.get("status") == "completed" and final:
            self.writer.add_hparams(hparams(self.cfg), final, run_name="hparams", global_step=summary["rounds"])
        self.writer.close()


class MLflowTracker:
    """One MLflow run per fedcls run (mlflow-skinny's client API, a local file store by default)."""

    def __init__(self, run_dir: Path, cfg: Config, first_round: int = 1):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("tracking.mlflow=true needs MLflow: pip install mlflow-skinny "
                              "(or set tracking.mlflow=false)") from None
        if cfg.tracking.mlflow_uri.startswith("file:"):  # MLflow 3 keeps its file store (no server, no
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # database) behind this switch
        self.client = mlflow.MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         self.client.create_experiment(cfg.tracking.mlflow_experiment))
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).name,
                                             tags={"fedcls.run_dir": str(run_dir)}).info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in hparams(cfg).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def round(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(row.get("started_at", 0) * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now, row["round"])
                                                    for tag, value in scalars(row).items()])

    def finish(self, summary: dict) -> None:
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(summary.get("status"), "FAILED")
        for key in ("final_accuracy", "best_accuracy"):
            if _number(summary.get(key)):
                self.client.log_metric(self.run_id, key, float(summary[key]))
        self.client.set_terminated(self.run_id, status)


def trackers_for(cfg: Config, run_dir: Path, first_round: int = 1) -> list:
    """The trackers `cfg.tracking` turns on, writing for the run in `run_dir`."""
    wanted = [(cfg.tracking.tensorboard, TensorBoardTracker), (cfg.tracking.mlflow, MLflowTracker)]
    return [tracker(run_dir, cfg, first_round) for on, tracker in wanted if on]
