"""A warm driver: ``python -m fedcls.serve`` imports fedcls, PyTorch and Flower once, starts (or
attaches to) Ray and keeps client actors warm; a command run with ``FEDCLS_SERVER`` set hands its
arguments to it and prints what its run prints, so a researcher's next run begins in about a second
instead of paying imports, Ray and actors again (benchmarks/startup.py, "through fedcls.serve").

Both halves are here: ``serve`` (the long-lived process) and ``forward`` (the command's side, standard
library only, so that a forwarded command imports nothing heavy). Written by hand: Ray Jobs would
start a fresh driver per job, which is the cost this removes.

- Commands run one at a time, in the order they connect, as they would in the shell; a command that
  finds the driver busy says so and waits (Ctrl-C then leaves at once; the driver skips a command
  that left).
- A command runs in the driver exactly as it would alone (``fedcls.simulate``'s and
  ``fedcls.sweep``'s own entry points, in the command's folder, its output sent back as it is written,
  its exit code returned): the same config and seed give the same rows (tests/test_warm_driver.py).
- The driver serves only the code it imported: a command whose code digest (fedcls.engine.code_digest)
  differs, after an edit or an upgrade, runs by itself, saying why; so does one naming another
  ``backend.ray_address`` or a different PYTHONPATH or CUDA_VISIBLE_DEVICES, and one that finds no driver.
- Ctrl-C in the command stops its run at the next safe point, as it does alone (exit 130, the
  rounds so far saved); a second Ctrl-C leaves at once and the run stops at that safe point. A
  command that disappears stops its run the same way. Ctrl-C in the driver's terminal stops the run
  in progress, or the driver when it is idle.
- The socket is in a folder only its user can enter (mode 0700): a command runs with the driver's
  rights, so no other user may send one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

SERVER_ENV = "FEDCLS_SERVER"  # a socket path, or 1/auto for default_socket()
SAME_ENV = ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")  # a command runs with the driver's: they must agree
BUSY_NOTE_S = 1.0  # a command waiting longer than this for its first line says the driver is busy
REQUEST_WAIT_S = 10.0  # a connection that sends no command within this is dropped


def default_socket() -> Path:
    return Path(tempfile.gettempdir()) / f"fedcls-{os.getuid()}" / "serve.sock"


def socket_path(value: str) -> Path:
    return default_socket() if value.strip().lower() in ("", "1", "auto", "true") else Path(value).expanduser()


# ---- the command's half -------------------------------------------------------------------------

def forward(tool: str, args: list[str]) -> int | None:
    """Run `tool` (simulate | sweep) with `args` in the warm driver named by FEDCLS_SERVER and
    return its exit code; None when the command should run here instead (no FEDCLS_SERVER, a
    --help or --cfg, no driver answering, or one that refuses: the reason is printed)."""
    where = os.environ.get(SERVER_ENV)
    if where is None or {"-h", "--help", "--cfg"} & set(args):
        return None
    path = socket_path(where)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError as err:
        return _here(f"no fedcls server answers at {path} ({SERVER_ENV}; {err.strerror or err}); start one with "
                     "`python -m fedcls.serve`, or unset " + SERVER_ENV)
    from fedcls.errors import exit_code_of

    with conn:  # closed on the way out, whatever the way: the driver then stops the run
        channel = Channel(conn)
        channel.send(request(tool, args))
        return exit_code_of(lambda: _follow(channel, path))  # e.g. a reader gone (`... | head`): exit 141


def request(tool: str, args: list[str]) -> dict:
    from fedcls.engine.code_digest import code_digest

    size = os.get_terminal_size(sys.stdout.fileno()) if sys.stdout.isatty() else None
    return {"tool": tool, "args": args, "cwd": os.getcwd(), "code": code_digest(),
            "env": {k: os.environ.get(k) for k in SAME_ENV}, "tty": sys.stdout.isatty(),
            "size": [size.columns, size.lines] if size else None}


def _follow(channel: Channel, path: Path) -> int | None:
    """Print the driver's output for this command until its exit code arrives."""
    presses, started = [], []

    def ctrl_c(signum, frame) -> None:
        presses.append(time.time())
        if not started:  # still waiting for the driver: nothing ran, leave (the driver skips a command gone)
            print("\ninterrupted before the fedcls server started the command", file=sys.stderr, flush=True)
            raise SystemExit(130)
        if len(presses) == 1:
            with contextlib.suppress(OSError):
                channel.send({"interrupt": True})
            return
        print("\ninterrupted; the fedcls server stops the run at its next safe point", file=sys.stderr, flush=True)
        raise SystemExit(130)

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        message = channel.receive(timeout=BUSY_NOTE_S)
        if message == "timeout":
            print(f"fedcls server at {path} is running another command; this one waits for it", flush=True)
            message = channel.receive()
        while message is not None:
            if "refused" in message:
                return _here(message["refused"])
            if "exit" in message:
                return int(message["exit"])
            if "started" in message:
                started.append(True)
                message = channel.receive()
                continue
            stream = sys.stdout if "out" in message else sys.stderr
            stream.write(message.get("out", message.get("err", "")))
            stream.flush()
            message = channel.receive()
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"error: the fedcls server at {path} ended during the command (its terminal says why); rounds "
          "completed so far are in the run folder", file=sys.stderr)
    return 1


def _here(reason: str) -> None:
    print(f"note: {reason}; running here", file=sys.stderr, flush=True)
    return None


class Channel:
    """JSON messages, one per line, over a connected socket (sends from any thread)."""

    def __init__(self, conn: socket.socket):
        self.conn, self._lock, self._buffer = conn, threading.Lock(), b""

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            self.conn.sendall(data)

    def receive(self, timeout: float | None = None) -> dict | str | None:
        """The next message; None once the other side is gone; 'timeout' after `timeout` s."""
        self.conn.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                chunk = self.conn.recv(65536)
                if not chunk:
                    return None
                self._buffer += chunk
        except TimeoutError:
            return "timeout"
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                self.conn.settimeout(None)
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:  # not a fedcls command: as if it had gone
            return None
        return message if isinstance(message, dict) else None


# ---- the driver's half --------------------------------------------------------------------------

class ToCommand(io.TextIOBase):
    """sys.stdout or sys.stderr of a command's run: what is written goes to the command."""

    def __init__(self, channel: Channel, kind: str, tty: bool, lost: threading.Event):
        self.channel, self.kind, self.tty, self.lost = channel, kind, tty, lost

    def write(self, text: str) -> int:
        if text and not self.lost.is_set():
            try:
                self.channel.send({self.kind: text})
            except OSError:  # the command went away: its run stops at the next safe point
                from fedcls.errors import STOP

                self.lost.set()
                STOP.set()
        return len(text)

    def isatty(self) -> bool:
        return self.tty

    @property
    def encoding(self) -> str:
        return "utf-8"


def serve(args: list[str], tools: dict[str, Callable[[list[str]], int]]) -> int:
    """``python -m fedcls.serve [socket=PATH] [key=value ...]``: the keys (backend.*, and the
    scenario whose data the actors build while waiting) as a run takes them; `tools`: each
    command's name and the function that runs it on its arguments in this process (the entry
    points', given by fedcls.serve: this layer does not import them)."""
    from fedcls.config import compose

    path = socket_path(next((a.split("=", 1)[1] for a in args if a.startswith("socket=")), ""))
    overrides = [a for a in args if not a.startswith("socket=")]
    cfg = compose(overrides)
    listener = _listen(path)
    _import_run_path()
    from fedcls.engine.code_digest import code_digest
    from fedcls.engine.lifecycle import ray_started
    from fedcls.engine.simulation import shared_ray

    address, code = cfg.backend.ray_address, code_digest()
    try:
        with shared_ray(address, cfg.verbose, first=cfg) as (actors, _):
            signal.signal(signal.SIGTERM, _terminate)  # after ray.init, which installs its own (an abort)
            print(f"fedcls server: Ray {ray_started(address)}; {actors} client actors warming up; code {code}\n"
                  f"  serving commands at {path}: in another shell\n"
                  f"    export {SERVER_ENV}={path}\n"
                  f"    python -m fedcls.simulate scenario=label_2   # or fedcls.sweep ...\n"
                  f"  Ctrl-C here stops the run in progress, or this server when idle", flush=True)
            while not LEAVING.is_set():
                conn, _ = listener.accept()
                with conn:
                    BUSY.set()
                    try:
                        _serve_one(Channel(conn), address, code, tools)
                    finally:
                        BUSY.clear()
    except KeyboardInterrupt:
        print("fedcls server stopped", flush=True)
        return 0
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()


BUSY, LEAVING = threading.Event(), threading.Event()


def _terminate(signum, frame) -> None:
    """SIGTERM: stop the run in progress at its next safe point and leave after it, or leave now."""
    from fedcls.errors import STOP

    LEAVING.set()
    if not BUSY.is_set():
        raise KeyboardInterrupt
    STOP.set()


def _listen(path: Path) -> socket.socket:
    """A listening socket at `path`, in a folder only this user can enter; UserError when another
    server answers there."""
    from fedcls.errors import UserError

    try:
        return _bound(path)
    except OSError as err:  # a folder that cannot be made, a path too long for a socket (~100 bytes)
        raise UserError(f"cannot listen at socket={path}: {err.strerror or err}; pass socket=<a short path in a "
                        "folder of yours>") from None


def _bound(path: Path) -> socket.socket:
    from fedcls.errors import UserError

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_uid != os.getuid() or path.parent.stat().st_mode & 0o077:
        raise UserError(f"{path.parent} is not a folder only you can enter; pass socket=<path in such a folder>")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a server that was killed
        else:
            probe.close()
            raise UserError(f"a fedcls server already answers at {path}; stop it (Ctrl-C in its terminal) or pass "
                            "socket=<another path>")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    return listener


def _import_run_path() -> None:
    """What a run imports in the driver, imported once here."""
    import flwr.simulation  # noqa: F401

    import fedcls.apps.client_app  # noqa: F401
    import fedcls.apps.server_app  # noqa: F401
    import fedcls.engine.runner  # noqa: F401


def refusal(message: dict, address: str | None, code: str, tools=("simulate", "sweep")) -> str | None:
    """Why this driver must not run the command in `message` (None: it may)."""
    args, cwd = message.get("args"), message.get("cwd")
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args) and isinstance(cwd, str)):
        return "not a fedcls command (arguments and folder missing)"
    if message.get("tool") not in tools:
        return f"the fedcls server runs {' and '.join(f'fedcls.{t}' for t in tools)}, not {message.get('tool')!r}"
    if message.get("code") != code:
        return ("the fedcls server runs other code than this command's (edited or upgraded since it started); "
                "restart it to serve this code")
    named = [a.split("=", 1)[1] for a in args if a.startswith("backend.ray_address=")]
    if named and named[-1] not in {str(address), *(("null", "None", "~", "") if address is None else ())}:
        return f"the command names backend.ray_address={named[-1]}; the fedcls server is attached to {address}"
    env = {k: os.environ.get(k) for k in SAME_ENV}
    if differ := [k for k in SAME_ENV if message.get("env", {}).get(k) != env[k]]:
        return f"{differ[0]} differs from the fedcls server's; start the server with the same environment"
    return None


def _serve_one(channel: Channel, address: str | None, code: str, tools: dict) -> None:
    message = channel.receive(timeout=REQUEST_WAIT_S)
    if not isinstance(message, dict):  # gone, silent or not a command: the next one
        return
    if reason := refusal(message, address, code, tuple(tools)):
        channel.send({"refused": reason})
        return
    try:
        channel.send({"started": True})
    except OSError:  # the command left while it waited (Ctrl-C): nothing to run
        return
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {message['tool']} {' '.join(message['args'])}", flush=True)
    exit_code = run_command(channel, message, tools[message["tool"]])
    print(f"  exit {exit_code} after {time.time() - started:.1f}s", flush=True)
    with contextlib.suppress(OSError):
        channel.send({"exit": exit_code})


def run_command(channel: Channel, message: dict, entry: Callable[[list[str]], int]) -> int:
    """Run the command in this process as its own entry point would, its output sent back."""
    from fedcls.caching import forget_everything
    from fedcls.engine import actor_reserve
    from fedcls.errors import STOP, exit_code_of

    lost = threading.Event()
    out, err = (ToCommand(channel, kind, bool(message.get("tty")), lost) for kind in ("out", "err"))
    forget_everything()  # data files may have changed since the last command
    actor_reserve.forget_in_actors()
    where = os.getcwd()
    size = message.get("size")
    with _environment({"COLUMNS": str(size[0]), "LINES": str(size[1])} if size else {}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        watcher = threading.Thread(target=_watch, args=(channel, err, lost, STOP), daemon=True)
        try:
            os.chdir(message["cwd"])
            return exit_code_of(lambda: _started(watcher, entry, message["args"]), defer_ctrl_c=True)
        except Exception:  # noqa: BLE001 - a bug shows its traceback to the command, as it would alone
            traceback.print_exc()
            return 1
        finally:
            os.chdir(where)
            lost.set()  # ends the watcher's stop duty: STOP is the next command's
            if watcher.is_alive():
                watcher.join()  # within its receive timeout, before the connection closes


def _started(watcher: threading.Thread, entry, args: list[str]) -> int:
    watcher.start()  # inside ctrl_c_deferred, which clears STOP on entry
    return entry(args)


def _watch(channel: Channel, err: ToCommand, lost: threading.Event, stop: threading.Event) -> None:
    """The command's Ctrl-C (or its going away) stops the run at its next safe point."""
    while not lost.is_set():
        message = channel.receive(timeout=0.5)
        if message == "timeout":
            continue
        if lost.is_set():
            return
        stop.set()
        if message is None:  # the command is gone
            lost.set()
            return
        err.write("\nstopping at the next safe point (Ctrl-C again to leave at once)\n")


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
