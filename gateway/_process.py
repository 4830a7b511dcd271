"""What the local Kafka and Redis launchers share: a data dir, a state file, a pid we may signal.

A service runs in its own session, so it outlives the command that started it; the state file
in its data dir lets a later command find it, reuse it or stop it, and a lock file there makes
concurrent starts share one process. A pid is only signalled when
``/proc/<pid>/cmdline`` names the service's config file in that data dir: a pid the kernel has
since given to another program is left alone.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from .errors import InvalidSettings, PortInUse, ServiceError, ServiceStartFailed
from .settings import ENV_PREFIX

__all__ = [
    "HOST",
    "LocalService",
    "ServiceState",
    "ServiceStatus",
    "cache_root",
    "choose_port",
    "free_port",
    "locked",
    "pid_alive",
    "port_in_use",
    "read_state",
    "rotate",
    "spawn",
    "state_root",
    "tail",
    "terminate",
    "write_private",
    "write_state",
]

HOST = "127.0.0.1"
STATE_FILE = "state.json"
LOCK_FILE = "launcher.lock"
_TAIL_BYTES = 256 * 1024
#: Our variables a service is started with: paths, not secrets. A JWT key or Kafka's password
#: in the launcher's environment stayed in the service's (/proc/<pid>/environ), which
#: outlives the command that started it; neither Kafka nor Redis reads any of ours.
_SERVICE_VARIABLES = frozenset({ENV_PREFIX + "DATA_DIR", ENV_PREFIX + "CACHE_DIR"})

# Services this process spawned: it reaps them when they end, or they would stay zombies.
_spawned: set[int] = set()


@dataclass(frozen=True)
class ServiceStatus:
    """A running service, as ``status()`` reports it."""

    pid: int
    address: str
    data_dir: Path
    version: str


@dataclass(frozen=True)
class ServiceState:
    """What the state file records about the process a data dir started."""

    pid: int
    address: str
    version: str
    ports: Mapping[str, int]
    started_at: str


def state_root() -> Path:
    """Where services keep their data dirs: ``$SOCKETIO_KAFKA_DATA_DIR``, else an XDG-style path."""
    return _env_path("DATA_DIR") or Path.home() / ".local" / "state" / "socketio-kafka"


def cache_root() -> Path:
    """Where fetched artefacts are kept: ``$SOCKETIO_KAFKA_CACHE_DIR``, else an XDG-style path."""
    return _env_path("CACHE_DIR") or Path.home() / ".cache" / "socketio-kafka"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(ENV_PREFIX + name)
    return Path(value).expanduser() if value else None


def read_state(path: Path) -> ServiceState | None:
    """The recorded state, or None when there is none or it cannot be read."""
    try:
        raw = json.loads(path.read_text())
        return ServiceState(
            pid=int(raw["pid"]),
            address=str(raw["address"]),
            version=str(raw["version"]),
            ports={str(name): int(port) for name, port in raw["ports"].items()},
            started_at=str(raw["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_state(path: Path, state: ServiceState) -> None:
    """Replace the state file in one step, so a reader never sees half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({**asdict(state), "ports": dict(state.ports)}, indent=2))
    partial.replace(path)


def write_private(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with a file only its owner may read (0600 from its creation): a
    config that holds a password, a key. ``write_text`` made it 0644, as the umask let."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    data = content.encode() if isinstance(content, str) else content
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yield whether it was taken (always, if blocking)."""
    with path.open("a") as handle:
        flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def spawn(argv: Sequence[str], *, log: Path) -> int:
    """Start ``argv`` in a new session, so it outlives this process and its Ctrl-C.

    ``posix_spawn`` rather than ``Popen``: a Popen collected while its process still runs
    warns (ResourceWarning), and a service is meant to outlive the command that started it.
    """
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
        # What the launcher inherited stays out: a caller reading a pipe to its end (fd 3
        # of a shell, say) would otherwise wait for the service to exit.
        *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()),
    ]
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(ENV_PREFIX) or name in _SERVICE_VARIABLES
    }
    pid = os.posix_spawn(argv[0], list(argv), environment, file_actions=actions, setsid=True)
    _spawned.add(pid)
    return pid


def _inheritable_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own, closed by now
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
    return fds


def pid_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs with ``marker`` as one of its arguments."""
    if _gone(pid):
        return False
    if pid in _spawned:
        # Our own child, not reaped yet: its pid cannot be another process's, so there is
        # no reuse to guard against (a Kafka start under load was once ended here as
        # "exited" with its log still empty: the command line is not read any more).
        return True
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(marker) in arguments


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, and SIGKILL if ``pid`` is still there after ``timeout``; returns once it is gone."""
    _signal(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def port_in_use(port: int) -> bool:
    """Whether a bind to 127.0.0.1:``port`` fails, as the service's own bind would."""
    with socket.socket() as sock:
        # Servers set SO_REUSEADDR; without it, connections in TIME_WAIT left by the last
        # run on this port would count as a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def choose_port(requested: int | None, previous: int | None, avoid: Collection[int] = ()) -> int:
    """The asked-for port, else the one used last time if still free, else a free one."""
    if requested is not None:
        if requested in avoid or port_in_use(requested):
            raise PortInUse(f"port {requested} on {HOST} is taken by another process")
        return requested
    if previous is not None and previous not in avoid and not port_in_use(previous):
        return previous
    return free_port(avoid)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:]) if lines > 0 else ""


def rotate(path: Path) -> None:
    """Keep the previous run's log as ``<name>.1``, so this run's log starts empty."""
    with contextlib.suppress(FileNotFoundError):
        path.replace(path.with_name(path.name + ".1"))


def _reap(pid: int) -> None:
    """Collect the exit of a service this process spawned, so it leaves no zombie behind."""
    if pid not in _spawned:
        return
    try:
        ended = os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # already collected
        ended = True
    if ended:
        _spawned.discard(pid)


def _gone(pid: int) -> bool:
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # A zombie has exited; an orphan stays one where init does not reap (some containers).
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class LocalService(abc.ABC):
    """The lifecycle shared by ``LocalKafka`` and ``LocalRedis``; subclasses launch and probe."""

    name: ClassVar[str]
    config_name: ClassVar[str]
    log_name: ClassVar[str]

    def __init__(self, data_dir: Path, port: int | None) -> None:
        if port is not None and not 0 < port < 65536:
            raise InvalidSettings(f"port out of range: {port}")
        self.data_dir = data_dir.expanduser().resolve()
        self.port = port

    @property
    def config_path(self) -> Path:
        """The generated config file; its path in the cmdline marks our process."""
        return self.data_dir / self.config_name

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def start(self, timeout: float) -> str:
        """Reuse the service this data dir runs, or launch it; return its address once up."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / LOCK_FILE):
            state = self._running_state()
            if state is not None:
                return self._reuse(state, timeout)
            return self._launch(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """End the process this data dir started, if any; return whether one was running."""
        return self._end(lambda pid: terminate(pid, timeout))

    def kill(self) -> bool:
        """SIGKILL the process this data dir started, as a crash would; return whether one ran.

        For failure tests: the service gets no chance to shut down cleanly.
        """

        def crash(pid: int) -> None:
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)

        return self._end(crash)

    def _end(self, end: Callable[[int], None]) -> bool:
        # The lock, not the state file: a start under way (fetching the jars, formatting)
        # writes the state only once its process runs, and a stop said "not running" then
        # while the service came up after it. It waits for that start, then ends it.
        if not (self.data_dir / LOCK_FILE).exists():
            return False
        with locked(self.data_dir / LOCK_FILE):
            state = self._running_state()
            if state is None:
                return False
            end(state.pid)
            self.state_path.unlink(missing_ok=True)
            return True

    def status(self) -> ServiceStatus | None:
        """The running service, or None; a state file left by a dead process is removed."""
        if not self.state_path.exists():
            return None
        # While another command holds the lock it may be rewriting the state: do not clean up.
        with locked(self.data_dir / LOCK_FILE, blocking=False) as owned:
            state = self._running_state() if owned else read_state(self.state_path)
        if state is None or not pid_alive(state.pid, str(self.config_path)):
            return None
        return ServiceStatus(state.pid, state.address, self.data_dir, state.version)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service's log, to show why it failed."""
        return tail(self.log_path, lines)

    @abc.abstractmethod
    def _launch(self, timeout: float) -> str:
        """Write the config, start the process (see ``_run``) and return its address."""

    @abc.abstractmethod
    def _answers(self, address: str) -> bool:
        """One quick probe: does the service at ``address`` serve requests?"""

    def _running_state(self) -> ServiceState | None:
        """The state of a live process of ours; call with the lock held (it removes stale state)."""
        state = read_state(self.state_path)
        if state is not None and pid_alive(state.pid, str(self.config_path)):
            return state
        self.state_path.unlink(missing_ok=True)
        return None

    def _reuse(self, state: ServiceState, timeout: float) -> str:
        running_port = state.ports.get("client")
        if self.port is not None and self.port != running_port:
            raise ServiceError(
                f"{self.name} from {self.data_dir} already runs on port {running_port}"
                f" (pid {state.pid}); stop it first to use port {self.port}"
            )
        self._await_ready(state.pid, state.address, timeout)
        return state.address

    def _run(
        self,
        argv: Sequence[str],
        address: str,
        ports: Mapping[str, int],
        version: str,
        timeout: float,
    ) -> str:
        """Start ``argv`` in the background and record it; end it again if it never answers."""
        rotate(self.log_path)
        pid = spawn(argv, log=self.log_path)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        # Recorded before it answers, so an interrupted start can still be found and stopped.
        write_state(self.state_path, ServiceState(pid, address, version, ports, started_at))
        try:
            self._await_ready(pid, address, timeout)
        except BaseException:
            terminate(pid, 10.0)
            self.state_path.unlink(missing_ok=True)
            raise
        return address

    def _await_ready(self, pid: int, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._answers(address):
            if not pid_alive(pid, str(self.config_path)):
                raise ServiceStartFailed(
                    f"{self.name} (pid {pid}) exited before it answered; see {self.log_path}",
                    self.log_tail(),
                )
            if time.monotonic() > deadline:
                raise ServiceStartFailed(
                    f"{self.name} (pid {pid}) did not answer at {address} within {timeout:g}s;"
                    f" see {self.log_path}",
                    self.log_tail(),
                )
            time.sleep(0.1)
