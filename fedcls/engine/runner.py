"""Run one configured simulation: build the data first (bad data fails before Ray starts),
then the Flower simulation, and report where the results are."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fedcls.data.federated import federated_data
from fedcls.errors import UserError
from fedcls.outputs import checkpoint
from fedcls.outputs.results import Recorder, new_run_dir


def run(cfg: dict, echo=print, resume_dir: Path | None = None) -> int:
    """Run `cfg` (or continue the run in `resume_dir` from its checkpoint); 0 when completed,
    1 when the run failed, 130 when interrupted. ``echo`` prints the per-round lines (None:
    silent, as in a sweep)."""
    started = time.time()
    federated_data(cfg)  # missing data or an impossible partition stops here, with exit 2
    resume = checkpoint.load(resume_dir) if resume_dir else None
    recorder = Recorder(resume_dir or new_run_dir(cfg), cfg, echo=echo or (lambda line: None))
    if echo is None:
        return _simulate(cfg, recorder, resume)
    what = f"resuming after round {resume['round']}" if resume else f"{cfg['rounds']} rounds"
    print(f"fedcls: {cfg['dataset']}, {cfg['num_clients']} sites, partition {cfg['partition']['kind']}, "
          f"strategy {cfg['strategy']['name']}, {what} -> {recorder.run_dir}", flush=True)
    code = _simulate(cfg, recorder, resume)
    if code:
        return code
    rows = recorder.rows
    best = max(rows, key=lambda r: r["accuracy"])
    print(f"done in {time.time() - started:.1f}s: final accuracy {rows[-1]['accuracy']:.4f}, best "
          f"{best['accuracy']:.4f} (round {best['round']}); results in {recorder.run_dir}")
    return 0


def _simulate(cfg: dict, recorder: Recorder, resume: dict | None = None) -> int:
    from fedcls.engine.simulation import simulate

    try:
        simulate(cfg, recorder, resume)
    except KeyboardInterrupt:
        recorder.finish("interrupted", error="KeyboardInterrupt")
        print(f"\ninterrupted; rounds so far are in {recorder.run_dir}", file=sys.stderr, flush=True)
        os._exit(130)  # the ServerApp thread would otherwise keep the process alive
    except Exception as err:  # the ServerApp already wrote a 'failed' summary
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            print(f"error: {cause}", file=sys.stderr)
            return cause.exit_code
        print(f"error: the run failed: {type(cause).__name__}: {cause}\n"
              f"rounds completed so far are in {recorder.run_dir}", file=sys.stderr)
        return 1
    return 0
