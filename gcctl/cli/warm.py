"""A warm process for the stages of one `dvc repro`: Python's and the libraries' start-up paid once, not per stage.

Each DVC stage is a fresh `gcctl` process, and before any work it imports torch (about 2 s on an idle core),
torch._dynamo (2 s more: torch.optim imports it at the first step), open_clip with torchvision and timm (2 s)
and matplotlib (0.7 s); on the tiny pipeline that was 70% of the wall time. Under `dvc repro` (DVC sets
DVC_ROOT and DVC_STAGE for every command) the first `gcctl` process runs its command itself and starts a server
that imports all of that once; every later command connects to it and runs in a forked copy, with its own
arguments, working folder, environment and standard streams (the descriptors themselves, passed over the
socket), while the `gcctl` process DVC started waits, forwards the signals it gets (Ctrl-C, SIGTERM) and exits
with the copy's status. The copy is what a fresh process would be: same interpreter, search path, environment
and gcctl files, or the server is not used — they are its key, so an edited gcctl file or another environment
means another server. The server never runs torch (fork is safe only while OpenMP has no threads) and exits
after IDLE_SECONDS without a command. GCCTL_WARM=0 turns it off; torchrun's processes never use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_SECONDS = 60
PER_CALL_VARIABLES = ("DVC_STAGE", "PWD", "OLDPWD", "SHLVL", "_")  # differ between commands of one run
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Imported once by the server: what the stages' commands import before their work.
WARM_MODULES = ("torch", "torch._dynamo", "torch.optim", "open_clip", "matplotlib.figure",
                "matplotlib.backends.backend_agg", "pandas", "pyarrow.parquet", "h5py", "PIL.Image",
                "gcctl.methods", "gcctl.clip", "gcctl.store", "gcctl.pseudolabel", "gcctl.evaluation",
                "gcctl.discovery", "gcctl.finetune", "gcctl.report", "gcctl.html", "gcctl.synth", "gcctl.datasets")


def applies(environ=os.environ) -> bool:
    """A command under `dvc repro` on Linux, not under torchrun, not turned off."""
    return (sys.platform == "linux" and "DVC_ROOT" in environ and "DVC_STAGE" in environ
            and environ.get("GCCTL_WARM", "1") != "0" and "TORCHELASTIC_RUN_ID" not in environ
            and "LOCAL_RANK" not in environ)


def _package_state() -> list:
    package = Path(__file__).resolve().parents[1]
    return [package.as_posix()] + sorted(
        (path.relative_to(package).as_posix(), stat.st_mtime_ns, stat.st_size)
        for path in package.rglob("*") if "__pycache__" not in path.parts and path.is_file()
        for stat in [path.stat()])


def socket_path(environ=os.environ) -> Path:
    """Where the server for this interpreter, search path, environment and gcctl source listens."""
    kept = {name: value for name, value in environ.items() if name not in PER_CALL_VARIABLES}
    identity = json.dumps([sys.executable, sys.path, kept, _package_state()], sort_keys=True, default=list)
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"gcctl-warm-{os.getuid()}" / f"{key}.sock"


def run_warm(argv: list[str]) -> int | None:
    """Run `gcctl ARGV` in the warm server's copy and return its exit status; None when no server is ready
    (the caller runs the command itself; one is started for the commands that follow)."""
    path = socket_path()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        _start_server(path)
        return None
    with client:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        client.settimeout(120)  # a server still warming up answers within seconds
        try:
            socket.send_fds(client, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
            child = _read_message(client)
        except (OSError, ValueError):
            return None  # nothing ran: run the command here
        client.settimeout(None)
        return _wait_for(client, child["pid"])


def _wait_for(client: socket.socket, pid: int) -> int:
    def forward(number, _frame):
        try:
            client.sendall(json.dumps({"signal": number}).encode() + b"\n")
        except OSError:
            pass

    for number in FORWARDED_SIGNALS:
        signal.signal(number, forward)
    try:
        status = _read_message(client)["exit"]
    except (OSError, ValueError):
        sys.stderr.write(f"error: the warm gcctl process running this command (pid {pid}) stopped; rerun it with GCCTL_WARM=0\n")
        return 1
    if status < 0:  # killed by a signal: die of it too, as the command's own process would have
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _read_message(connection: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return json.loads(data.splitlines()[0])


def _start_server(path: Path) -> None:
    code = f"import sys; sys.path[:] = {sys.path!r}; from gcctl.cli.warm import serve; serve({str(path)!r})"
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True, cwd="/", stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serve(path: str) -> None:
    """Listen at `path`, warm up, then fork one copy per command until IDLE_SECONDS pass without one."""
    listener = _listen(Path(path))
    if listener is None:
        return
    try:
        _warm_up()
        _serve(listener)
    finally:
        Path(path).unlink(missing_ok=True)


def _listen(path: Path) -> socket.socket | None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:  # another server took it first, or a dead one left the file: its clients run themselves
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return None
        except OSError:
            path.unlink(missing_ok=True)
            listener.bind(str(path))
        finally:
            probe.close()
    listener.listen(16)
    return listener


def _warm_up() -> None:
    import importlib

    from gcctl.cli import COMMAND_MODULES
    from gcctl.runtime import configure_cpu_threads

    configure_cpu_threads()  # as main() does, before torch loads OpenMP
    commands = [f"gcctl.cli.{module}" for module in sorted(set(COMMAND_MODULES.values()))]
    for name in (*WARM_MODULES, *commands):  # imported, not registered: each copy registers its own command
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library not installed: a copy that needs it fails as a fresh process would
            continue


def _serve(listener: socket.socket) -> None:
    running: dict[int, socket.socket] = {}  # a copy's pid and the connection its exit status goes to
    watched: set[socket.socket] = set()  # those whose client may still send a signal
    last = time.monotonic()
    while running or time.monotonic() - last < IDLE_SECONDS:
        ready, _, _ = select.select([listener, *watched], [], [], 0.02)  # 20 ms: the latency a command ends with
        for connection in ready:
            if connection is listener:
                _accept(listener, running, watched)
            else:
                _relay(connection, running, watched)
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                connection = running.pop(pid)
                watched.discard(connection)
                try:
                    connection.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass
                connection.close()
                last = time.monotonic()


def _accept(listener: socket.socket, running: dict[int, socket.socket], watched: set[socket.socket]) -> None:
    connection, _ = listener.accept()
    connection.settimeout(10)
    try:
        header, fds, _, _ = socket.recv_fds(connection, 8, 3)
        size = int.from_bytes(header, "big")
        body = b""
        while len(body) < size:
            chunk = connection.recv(size - len(body))
            if not chunk:
                raise ValueError("short request")
            body += chunk
        request = json.loads(body)
    except (OSError, ValueError):
        connection.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in running.values():
            other.close()
        connection.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    running[pid] = connection
    watched.add(connection)
    try:
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass


def _relay(connection: socket.socket, running: dict[int, socket.socket], watched: set[socket.socket]) -> None:
    """A forwarded signal, or the waiting process gone (then its command is stopped)."""
    pid = next(pid for pid, held in running.items() if held is connection)
    try:
        data = connection.recv(4096)
    except OSError:
        data = b""
    if not data:
        watched.discard(connection)
    numbers = [json.loads(line)["signal"] for line in data.splitlines() if line.strip()] if data else [signal.SIGTERM]
    for number in numbers:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked copy: become the command's process, run it, and exit with its status."""
    import atexit
    import random

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for number in FORWARDED_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # a fresh process's unseeded state, not the server's
        _reopen_streams()
        sys.argv = ["gcctl", *request["argv"]]
        from gcctl.cli import main

        main(warm=False)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            sys.stderr.write(f"{stop.code}\n")
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _reopen_streams() -> None:
    """sys.stdin/stdout/stderr over the command's descriptors, buffered as Python buffers them at start-up."""
    import io

    def text(fd: int, mode: str, like, line_buffering: bool):
        return io.TextIOWrapper(io.FileIO(fd, mode, closefd=False), encoding=like.encoding, errors=like.errors,
                                line_buffering=line_buffering)

    sys.stdin = text(0, "r", sys.__stdin__ or sys.stdin, False)
    sys.stdout = text(1, "w", sys.__stdout__ or sys.stdout, os.isatty(1))
    sys.stderr = text(2, "w", sys.__stderr__ or sys.stderr, True)
