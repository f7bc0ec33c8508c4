"""Processes: start one in a session of its own, ask what runs, stop a whole tree.

The one process supervisor of the project. `catdog_runtime.services` (make up/down,
pid files under $CATDOG_RUN_DIR) and `Server` below (a child process owned by a
test or a benchmark) both start with `spawn`, wait with `catdog_runtime.waits` and
stop with `stop_tree`. psutil answers the questions about other processes (command
lines, process trees, who listens on a port).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from catdog_runtime.waits import WaitTimeout, wait_http, wait_until

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (held together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------------ what runs
def command_line(pid: int) -> list[str] | None:
    """The argv of a process: None when there is no such process, [] for a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return []
        if not process.cmdline():
            # A process that is exec'ing shows an empty command line for a moment.
            try:
                wait_until(process.cmdline, f"pid {pid}'s command line", timeout=2, interval=0.05)
            except WaitTimeout:
                return []
        return process.cmdline()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return []


def runs_command(pid: int, argv: list[str]) -> bool:
    """Whether `pid` runs `argv` (a console script shows up as `python SCRIPT args...`)."""
    actual = command_line(pid)
    if not actual:
        return False
    tail = argv[1:]
    program_seen = any(
        Path(part).name == Path(argv[0]).name for part in actual[: -len(tail) or None]
    )
    return program_seen and (not tail or actual[-len(tail) :] == tail)


def describe(pid: int) -> str:
    argv = command_line(pid)
    return f"pid {pid} (`{' '.join(argv)[:160]}`)" if argv else f"pid {pid}"


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (a server may listen from a child process)."""
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return {pid}


def listener_pids(port: int) -> set[int] | None:
    """Pids listening on TCP `port` (empty set: none; None: something listens, owner unknown)."""
    listening = [
        conn
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    ]
    if not listening:
        return set()
    pids = {conn.pid for conn in listening if conn.pid is not None}
    return pids or None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ------------------------------------------------------------------ memory
class RssSampler:
    """Resident memory of every process below `roots()` (asked again at each sample,
    so a restarted server is followed), sampled every `interval` s in a thread.

    `peak`: pid -> highest RSS seen; `first`: pid -> RSS when first seen (a
    baseline); `history`: (monotonic time, pid, RSS) every `history_every` s."""

    def __init__(
        self, roots: Callable[[], Iterable[int]], interval: float = 0.02, history_every=1.0
    ):
        self.roots, self.interval, self.history_every = roots, interval, history_every
        self.peak: dict[int, int] = {}
        self.first: dict[int, int] = {}
        self.history: list[tuple[float, int, int]] = []
        self._last_history = float("-inf")
        self.baseline = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[int, int]:
        now = {}
        for root in self.roots():
            for pid in descendants(root):
                try:
                    now[pid] = psutil.Process(pid).memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        for pid, rss in now.items():
            self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.first.setdefault(pid, rss)
        moment = time.monotonic()
        if moment - self._last_history >= self.history_every:
            self._last_history = moment
            self.history.extend((moment, pid, rss) for pid, rss in now.items())
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ start / stop
def spawn(argv: list[str], log_path: Path, env: dict, cwd: Path = ROOT) -> subprocess.Popen:
    """Start `argv` in a session of its own (it stops as a group), output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Signal every pid of `pids` that still runs."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_tree(pid: int, sig: int = signal.SIGTERM, grace_seconds: float = 20) -> bool:
    """Signal `pid`'s process group; after `grace_seconds`, SIGKILL the group and every
    process that was below it. Returns False when it had to kill.

    Children may run in sessions of their own (bentoml's workers do): a SIGKILL of
    the group alone would leave them running, holding the port."""
    tree = descendants(pid)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass

    def gone() -> bool:
        _reap(pid)
        return not alive(pid)

    try:
        wait_until(gone, f"pid {pid} to exit", grace_seconds)
        return True
    except WaitTimeout:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_all(tree)
        _reap(pid)
        return False


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ------------------------------------------------------------------ bentoml's own ports
# `bentoml serve` picks the ports of its process manager's (circus) control sockets by
# binding port 0 and closing it; circus binds them again seconds later, and any process
# can take such a port in between (an outgoing connection's ephemeral port, another
# server starting). The start then fails with this line and is worth trying again; a
# clash on the server's own port is reported differently ("[Errno 98]") and is not.
_INTERNAL_PORT_RACE = re.compile(r"Address already in use \(addr='tcp://127\.0\.0\.1:\d+'\)")
START_ATTEMPTS = 3


def lost_internal_port_race(log_text: str) -> bool:
    """Whether a failed start's log shows bentoml losing one of its own ports."""
    return _INTERNAL_PORT_RACE.search(log_text) is not None


# ------------------------------------------------------------------ owned servers
class Server:
    """A server process owned by the caller (a test, a benchmark), its log in `log_path`.

    `wait_http` fails at once when it exits; `stop()` ends its whole process tree."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict, cwd: Path = ROOT):
        self.name, self.log_path = name, log_path
        log_path.write_bytes(b"")
        self.process = spawn(args, log_path, env, cwd)

    def exited(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}"
            )

    def wait_http(self, url: str, timeout: float = 600, expect=(200,)) -> None:
        try:
            wait_http(url, timeout, expect=expect, check=self.exited)
        except WaitTimeout:
            raise WaitTimeout(
                f"{self.name} not ready at {url} after {timeout}s:\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig=signal.SIGINT, timeout: float = 20) -> None:
        if self.process.poll() is None:
            stop_tree(self.process.pid, sig, timeout)
        self.process.wait(10)


def start_server(
    name: str, args: list[str], log_path: Path, env: dict, url: str, timeout: float = 600
) -> Server:
    """A `Server` answering at `url`; started again (up to START_ATTEMPTS in all) when
    it lost a race for one of bentoml's internal ports. Stopped when it fails."""
    attempt = 1
    while True:
        server = Server(name, args, log_path, env)
        try:
            server.wait_http(url, timeout)
            return server
        except BaseException as error:
            server.stop()
            retry = isinstance(error, RuntimeError) and attempt < START_ATTEMPTS
            if not (retry and lost_internal_port_race(server.log_tail())):
                raise
        attempt += 1


def run(
    args: list[str], env: dict, timeout: float = 600, cwd: Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a CLI command; with `check`, raise with its output when it fails."""
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
            f"stderr:\n{result.stderr[-4000:]}"
        )
    return result
