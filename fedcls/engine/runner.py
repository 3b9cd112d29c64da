"""Run one configured simulation: build the data first (bad data fails before Ray starts),
then the Flower simulation, and report where the results are."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fedcls.config import rerun_command
from fedcls.data.federated import FederatedData, federated_data
from fedcls.engine.logs import WarningsLog, warnings_to_log
from fedcls.errors import Interrupted, UserError, stop_if_asked
from fedcls.outputs import checkpoint
from fedcls.outputs.locks import holding
from fedcls.outputs.progress import Progress
from fedcls.outputs.results import Recorder, new_run_dir, total_bytes
from fedcls.schema import Config


def run(cfg: Config, echo=print, resume_dir: Path | None = None, progress: Progress | None = None) -> int:
    """Run `cfg` (or continue the run in `resume_dir` from its checkpoint); 0 when completed,
    1 when the run failed (its traceback in <run folder>/error.txt); raises fedcls.errors.Interrupted
    (exit code 130) on Ctrl-C. ``echo`` prints the header, start-up phases, per-round and closing
    lines (None: none of them); `progress`: the console to use instead (a sweep's)."""
    progress = progress or Progress(cfg.rounds, echo)
    try:
        with warnings_to_log(cfg.verbose) as log:
            if resume_dir is not None:  # a second resume of the same folder meets its lock
                with holding(Path(resume_dir), "the run folder"):
                    return _run(cfg, echo, resume_dir, progress, log)
            return _run(cfg, echo, None, progress, log)
    finally:
        progress.close()


def _run(cfg: Config, echo, resume_dir: Path | None, progress: Progress, log: WarningsLog | None) -> int:
    started = time.time()
    stop_if_asked()  # Ctrl-C while starting (fedcls.errors.ctrl_c_deferred): nothing written yet
    if echo is not None:
        print(f"fedcls: {cfg.dataset}, {cfg.num_clients} sites, partition {cfg.partition.kind}, "
              f"strategy {cfg.strategy.name}, model {cfg.model.name}, {cfg.rounds} rounds", flush=True)
    data = federated_data(cfg)  # missing data or an impossible partition stops here, with exit 2
    stop_if_asked()
    resume = checkpoint.load(resume_dir) if resume_dir else None
    recorder = Recorder(resume_dir or new_run_dir(cfg), cfg, echo=echo or (lambda line: None),
                        command=rerun_command(cfg), started=started, progress=progress)
    if log is not None:
        log.into(recorder.run_dir)
    resuming = f"; resuming after round {resume['round']}" if resume else ""
    progress.phase("data", f"{len(data.dataset.train_y)} training images over {len(data.sites)} sites; "
                           f"results in {recorder.run_dir}{resuming}")
    code = _simulate(cfg, data, recorder, resume)
    progress.close()  # the live line goes before the closing line is printed (it was left glued to it)
    if code or echo is None:
        return code
    rows = recorder.rows
    best = max(rows, key=lambda r: r["accuracy"])
    traffic = total_bytes(rows)
    print(f"done in {recorder.seconds:.1f}s: final accuracy {rows[-1]['accuracy']:.4f}, best "
          f"{best['accuracy']:.4f} (round {best['round']}){headline(recorder.extras)}; "
          f"{traffic['to_sites'] / 1e6:.1f} MB sent to the sites, {traffic['from_sites'] / 1e6:.1f} MB back; "
          f"results in {recorder.run_dir}")
    return 0


def headline(extras: dict) -> str:
    """The metrics a continual or domain-shift run exists for, as the closing line states them."""
    parts = []
    if "average_accuracy" in extras:  # fedcls.algorithms.continual.metrics
        parts.append(f"average accuracy over experiences {extras['average_accuracy']:.4f}, forgetting "
                     f"{extras['forgetting']:.4f}, BWT {extras['bwt']:+.4f}")
    if extras.get("target_accuracy") is not None:  # fedcls.algorithms.domain_eval
        parts.append(f"held-out target sites {extras['targets']} accuracy {extras['target_accuracy']:.4f}")
    if "privacy" in extras:  # fedcls.algorithms.privacy, .dpsgd
        p = extras["privacy"]
        spent = "no noise: no privacy guarantee" if p.get("epsilon") is None else \
            f"(epsilon {p['epsilon']:.3g}, delta {p['delta']:g})"
        name = {"central": "central DP", "client_clipping": "central DP, sites clip", "dpsgd": "DP-SGD"}
        parts.append(f"{name.get(p.get('dp'), 'differential privacy')} {spent}")
    return "".join(f"; {p}" for p in parts)


def _simulate(cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None = None) -> int:
    from fedcls.engine.simulation import simulate

    try:
        simulate(cfg, data, recorder, resume)
    except KeyboardInterrupt as err:
        if recorder.status == "completed":  # Ctrl-C came after the last round was written: nothing lost
            print("\ninterrupted after the run completed", file=sys.stderr, flush=True)
            return 0
        _interrupted(recorder, err)
    except Exception as err:  # the ServerApp already wrote a 'failed' summary
        return _failed(recorder, err)
    return 0


def _failed(recorder: Recorder, err: Exception) -> int:
    """Keep the failure's evidence in the run folder (error.txt) and say so in one line."""
    cause = err.__cause__ or err
    path = recorder.record_error(err)
    if isinstance(cause, UserError):
        print(f"error: {cause}", file=sys.stderr)
        code = cause.exit_code
    else:
        message = (str(cause).strip().splitlines() or [""])[0]
        print(f"error: the run failed: {type(cause).__name__}: {message} (traceback in {path}; rounds "
              f"completed so far are in {recorder.run_dir})", file=sys.stderr)
        code = 1
    _leave_if_stuck(err, code)
    return code


def _interrupted(recorder: Recorder, err: KeyboardInterrupt) -> None:
    """Ctrl-C: the rounds so far are in metrics.jsonl (and the last checkpoint, which a stopping
    round loop finishes writing); the summary says interrupted. Raises Interrupted (exit 130),
    so that callers' cleanup (a sweep's Ray) runs."""
    if recorder.status == "interrupted":  # the ServerApp thread stopped and wrote the plots
        recorder.write_summary("interrupted", "KeyboardInterrupt")
    else:
        recorder.finish("interrupted", error="KeyboardInterrupt")
    print(f"\ninterrupted; rounds so far are in {recorder.run_dir}", file=sys.stderr, flush=True)
    _leave_if_stuck(err, Interrupted.exit_code)
    raise Interrupted from None


def _leave_if_stuck(err: BaseException, code: int) -> None:
    """Exit now if the ServerApp thread did not stop (fedcls.engine.simulation.STOP_WAIT_S):
    everything is written, and that thread would keep the process alive."""
    if getattr(err, "server_running", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
