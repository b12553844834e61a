"""Run a Flower app on Flower's own deployment engine (flwr 1.42), on loopback, in real processes.

This is a test helper, not a test. It starts one ``flower-superlink`` and ``num_nodes``
``flower-supernode`` processes on ``127.0.0.1`` (insecure HTTP: it is loopback only), submits an app
directory with ``flwr run``, waits for the run to finish and reports Flower's own verdict on it::

    with FlowerDeployment(tmp_path, num_nodes=3) as dep:
        res = dep.run(app_dir, {"result-path": tmp_path / "result.json"}, timeout=60)
        assert res.ok, dep.logs()

Killing a node mid-round (the app under test writes a marker file from its ClientApp)::

    with FlowerDeployment(tmp_path, num_nodes=3) as dep:
        handle = dep.run_async(app_dir, {"marker-dir": dep.markers}, timeout=120)
        dep.wait_for_file(dep.markers / "marker-round2-node2", timeout=60, handle=handle)
        dep.kill_node(2)
        res = handle.wait()

How flwr 1.42 is driven (read from its sources; the design follows from these facts):

* ``flower-superlink`` serves the Fleet, Control *and* ServerAppIo/Runtime APIs over HTTP on one
  port, ``--host``/``--port`` (default 127.0.0.1:8000); the old ``--fleet-api-address`` /
  ``--control-api-address`` / ``--serverappio-api-address`` options are deprecated or rejected.
  Health check: ``GET /health``. State is in memory unless ``--database PATH`` is given (we give one
  under ``tmp``). In the default ``--isolation subprocess`` it spawns ``flower-superexec`` in a *new
  session* (``start_new_session=True``), which spawns ``flwr-serverapp`` per run, so a process-group
  kill of the SuperLink does not reach them: cleanup here also sweeps ``/proc`` for every process
  that carries this deployment's marker in its environment (children inherit it).
* ``flower-supernode --insecure --superlink 127.0.0.1:PORT --port P`` needs its own ``--port``
  (its Runtime HTTP API for the ClientApp processes, default 9094) so that several run on one host;
  ``--clientappio-api-address`` is rejected in 1.42. ``--node-config`` takes ``k=v`` pairs or a
  path to a ``.toml`` file (used here: no quoting pitfalls). Its ``flower-superexec`` and the
  ``flwr-clientapp`` processes stay in its process group, so ``killpg`` takes the node down whole.
* ``flwr run APP CONNECTION``: CONNECTION names a ``[superlink.<name>]`` table in
  ``$FLWR_HOME/config.toml`` (``address = "127.0.0.1:PORT"``, ``insecure = true``). Legacy
  ``[tool.flwr.federations]`` in the app's pyproject are *migrated* by ``flwr run``, which rewrites
  that pyproject in place; the app directory is therefore copied under ``tmp`` before each run.
  ``flwr run`` builds the FAB in memory (``*.py``/``*.toml``/``*.json``... minus ``test_*.py``) and
  uploads it; SuperLink and each SuperNode unpack it to ``$FLWR_HOME/apps/<publisher>.<name>.<ver>.
  <hash>/`` and import the components from there (no pip install). Runtime dependency installation
  (``uv sync``) is ON by default on the SuperLink and is switched off here
  (``--disable-runtime-dependency-installation``); SuperNodes have it off unless
  ``--allow-runtime-dependency-installation``. So no network is needed: the app's dependencies must
  already be importable in this venv.
* ``--stream`` makes ``flwr run`` block, printing the ServerApp's log (which is *not* in the
  SuperLink's output), until the run is finished. The verdict (``finished:completed`` /
  ``finished:failed`` with the exception in the details / ``finished:stopped``) is what
  ``flwr ls CONNECTION --run-id ID --format json`` shows; :meth:`FlowerDeployment.run_status` reads
  it straight from the Control API (``POST /v1/control/list-runs``, protobuf), which is ~100x faster
  than starting the CLI.
* Update check and telemetry would reach the internet: ``FLWR_DISABLE_UPDATE_CHECK=1``,
  ``FLWR_TELEMETRY_ENABLED=0``. ``FLWR_HOME`` (and ``HOME``) point under ``tmp``.
  ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2`` (default 1 s) makes SuperExecs launch apps sooner.

Liveness, as the ServerApp sees it (flwr 1.42; measured with this harness on loopback, 2 cores):

* SIGKILLed SuperNode (:meth:`FlowerDeployment.kill_node`): it heartbeats every ~17.5-22.5 s
  (``HEARTBEAT_DEFAULT_INTERVAL = 30`` s in ``flwr/common/constant.py``, hard-coded: no CLI or env
  option on either side) and the SuperLink deems it offline ``HEARTBEAT_PATIENCE (2) x 30 s`` after
  its last heartbeat, so it looks alive for ~38-60 s (47 s measured). Then
  ``grid.send_and_receive`` returns, for each message still waiting on it, an error reply
  ``ErrorCode.NODE_UNAVAILABLE`` (5) with ``src_node_id`` = 1 (the SuperLink, *not* the dead node)
  and ``reply_to_message_id`` = the lost message's id (map it back to ``dst_node_id`` yourself), and
  ``grid.get_node_ids()`` stops listing the node.
* Graceful leave (SIGTERM, :meth:`FlowerDeployment.stop_node`): the SuperNode deactivates and
  unregisters itself, so the same NODE_UNAVAILABLE reply comes at the next 3 s poll (~6 s measured).
* Only the ClientApp process dies (:meth:`FlowerDeployment.kill_clientapps`): the SuperNode itself
  replies ``ErrorCode.CLIENT_APP_CRASHED`` (8, "ClientApp stopped responding.", ``src_node_id`` =
  that node) once the task heartbeat lapses, again 2 x 30 s (~62 s measured); the node stays in.
* A ``timeout`` on ``send_and_receive`` (FedAvg's ``start(timeout=...)``) just returns the replies
  that came in, with no error reply for the missing ones.
* SuperNodes and the Grid both poll every 3 s (hard-coded), so one round trip costs ~6 s even for a
  trivial app.

Everything runs with timeouts; every process gets its own process group and is SIGKILLed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w

_ENV_ID = "FLOWER_DEPLOY_ID"  # marks every process of one deployment (children inherit it)
_ENV_ROLE = "FLOWER_DEPLOY_ROLE"  # "superlink", "node-<i>" or "cli"
_CONNECTION = "flower-deploy-harness"  # name of the SuperLink connection in the CLI's config.toml
_NODE_READY = re.compile(r"SuperNode ID: (\d+)")
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_BIND_ERRORS = ("address already in use", "errno 98", "failed to start")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def _bin_dir() -> Path:
    """The directory holding ``flower-superlink`` & co: this interpreter's venv, else ``$PATH``."""
    here = Path(sys.executable).parent
    if (here / "flower-superlink").exists():
        return here
    found = shutil.which("flower-superlink")
    if found is None:
        raise RuntimeError("flower-superlink not found next to sys.executable nor on PATH")
    return Path(found).parent


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (bind to port 0, then release)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _marked_pids(dep_id: str, role: str | None = None) -> list[int]:
    """Pids of live processes whose environment carries this deployment's id (and ``role``)."""
    want = f"{_ENV_ID}={dep_id}".encode()
    want_role = f"{_ENV_ROLE}={role}".encode() if role is not None else None
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path("/proc", entry, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env and (want_role is None or want_role in env):
            pids.append(int(entry))
    return pids


def _kill(pids: list[int], pgids: list[int]) -> None:
    for pgid in pgids:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _toml_value(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"run/node config values must be bool, int, float, str or Path, got {v!r}")


@dataclass
class RunResult:
    """Outcome of one ``flwr run``, as the SuperLink reports it."""

    run_id: int
    status: str  # "finished:completed", "finished:failed", "finished:stopped", ...
    details: str  # Flower's status details, e.g. the ServerApp's exception
    seconds: float  # wall time from submitting the run to seeing it finished
    output: str  # what ``flwr run --stream`` printed (the ServerApp's log)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


class RunHandle:
    """A submitted run: ``flwr run --stream`` in the background. Use :meth:`wait`."""

    def __init__(self, dep: FlowerDeployment, proc: subprocess.Popen[bytes], log: Path,
                 log_fh: IO[bytes], default_timeout: float) -> None:
        self._dep, self._proc, self.log, self._log_fh = dep, proc, log, log_fh
        self._t0 = time.monotonic()
        self._default_timeout = default_timeout
        self._result: RunResult | None = None

    @property
    def run_id(self) -> int | None:
        """The run id once ``flwr run`` has printed it, else ``None``."""
        m = _RUN_STARTED.search(self.output())
        return int(m.group(1)) if m else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def done(self) -> bool:
        """True once ``flwr run --stream`` has exited (the run finished, or the CLI failed)."""
        return self._proc.poll() is not None

    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait until the run is finished and return Flower's verdict on it.

        Raises ``TimeoutError`` (after asking the SuperLink to stop the run) if it is not finished
        within ``timeout`` seconds of submission, and ``RuntimeError`` if ``flwr run`` could not
        submit it. Both messages include all processes' logs.
        """
        if self._result is not None:
            return self._result
        timeout = self._default_timeout if timeout is None else timeout
        deadline = self._t0 + timeout
        run_id: int | None = None
        while True:
            run_id = run_id or self.run_id
            if run_id is not None:
                status, details = self._dep.run_status(run_id)
                if status.startswith("finished"):
                    break
            elif self.done():  # the CLI gave up without submitting anything
                self._stop_cli()
                raise RuntimeError(f"flwr run did not start a run (rc={self._proc.returncode})\n"
                                   + self._dep.logs())
            if time.monotonic() > deadline:
                if run_id is not None:
                    self._dep._cli(["stop", str(run_id), _CONNECTION], timeout=30, check=False)
                self._stop_cli()
                raise TimeoutError(f"Flower run {run_id} not finished after {timeout:.0f} s\n"
                                   + self._dep.logs())
            time.sleep(0.5)
        seconds = time.monotonic() - self._t0
        # ``--stream`` ends by itself once the run is finished: let it print the tail of the log
        grace = time.monotonic() + 10.0
        while not self.done() and time.monotonic() < grace:
            time.sleep(0.1)
        self._stop_cli()
        self._result = RunResult(run_id, status, details, seconds, self.output())
        return self._result

    def _stop_cli(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._log_fh.close()


class FlowerDeployment:
    """One SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, all state and logs under ``tmp``.

    Use it as a context manager: ``__enter__`` starts the processes and waits (``start_timeout``)
    until the SuperLink answers and every SuperNode has registered; ``__exit__`` SIGKILLs all of
    them, whatever happened.

    ``node_config(i)`` gives SuperNode ``i``'s ``--node-config`` (default
    ``{"partition-id": i, "num-partitions": num_nodes}``). ``env`` adds/overrides environment
    variables for every process (e.g. ``PYTHONPATH``).

    Layout under ``tmp``: ``logs/*.log`` (one per process and per ``flwr`` command), ``flwr-home/``
    (``FLWR_HOME`` of each process; installed FABs land in ``flwr-home/<role>/apps``),
    ``superlink-<attempt>.db``, ``apps/`` (copies of submitted app directories) and ``markers/`` (a directory
    the app under test may write marker files to; see :meth:`wait_for_file`).
    """

    def __init__(self, tmp: Path, num_nodes: int,
                 node_config: Callable[[int], Mapping[str, Any]] | None = None, *,
                 env: Mapping[str, str] | None = None, start_timeout: float = 90.0) -> None:
        self.tmp = Path(tmp).resolve()
        self.num_nodes = num_nodes
        self._node_config = node_config or (
            lambda i: {"partition-id": i, "num-partitions": num_nodes})
        self.start_timeout = start_timeout
        self.id = uuid.uuid4().hex
        self.logs_dir = self.tmp / "logs"
        self.markers = self.tmp / "markers"
        for d in (self.logs_dir, self.markers, self.tmp / "home", self.tmp / "apps"):
            d.mkdir(parents=True, exist_ok=True)
        bin_dir = _bin_dir()
        base = dict(os.environ)
        no_proxy = ",".join(x for x in ("127.0.0.1,localhost", base.get("NO_PROXY", "")) if x)
        base.update({
            "PATH": f"{bin_dir}{os.pathsep}{base.get('PATH', '')}",  # flower-superexec & co
            "HOME": str(self.tmp / "home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NO_PROXY": no_proxy, "no_proxy": no_proxy,
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "COLUMNS": "100000",  # rich must not wrap the CLI's JSON output
            # SuperExec looks for new tasks (ServerApp/ClientApp launches) every 1 s by default
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
            _ENV_ID: self.id,
        })
        base.update(env or {})
        self._base_env = base
        self.port: int | None = None  # the SuperLink's single HTTP port (Fleet, Control, Runtime)
        self.node_ports: list[int] = [0] * num_nodes
        self.superlink: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes] | None] = [None] * num_nodes
        self.killed: dict[int, float] = {}  # node index -> time.time() of kill_node/stop_node
        self._handles: list[RunHandle] = []
        self._files: list[IO[bytes]] = []
        self._n_cli = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FlowerDeployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the SuperLink and all SuperNodes; return when all are up (or raise).

        The SuperNodes are started together with the SuperLink (they retry until it answers):
        importing flwr takes each process about as long as the SuperLink needs to come up.
        """
        for attempt in range(3):
            self.port = _free_ports(1)[0]
            self._write_cli_config()
            self.superlink = self._spawn("superlink", [
                "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.tmp / f"superlink-{attempt}.db"),
                "--disable-runtime-dependency-installation"])
            for i in range(self.num_nodes):
                self._start_node(i)
            if self._await_superlink():
                break
            failed = self._bind_failed("superlink")
            self._kill_role("superlink", self.superlink)
            for i in range(self.num_nodes):
                self._kill_role(f"node-{i}", self.nodes[i])
            if attempt == 2 or not failed:
                raise RuntimeError("flower-superlink did not come up\n" + self.logs())
        deadline = time.monotonic() + self.start_timeout
        pending = set(range(self.num_nodes))
        retries = dict.fromkeys(pending, 0)
        while pending:
            for i in sorted(pending):
                if self.node_id(i) is not None:
                    pending.discard(i)
                    continue
                proc = self.nodes[i]
                if proc is not None and proc.poll() is not None:
                    if retries[i] < 2 and self._bind_failed(f"node-{i}"):
                        retries[i] += 1
                        self._start_node(i)
                        continue
                    raise RuntimeError(f"flower-supernode {i} exited (rc={proc.returncode})\n"
                                       + self.logs())
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"SuperNodes {sorted(pending)} did not register within "
                                   f"{self.start_timeout:.0f} s\n" + self.logs())
            time.sleep(0.2)

    def close(self) -> None:
        """SIGKILL every process of this deployment (and their children); idempotent."""
        procs = [h._proc for h in self._handles] + [p for p in self.nodes if p is not None]
        if self.superlink is not None:
            procs.append(self.superlink)
        _kill(_marked_pids(self.id), [p.pid for p in procs if p.poll() is None])
        time.sleep(0.1)
        _kill(_marked_pids(self.id), [])  # anything forked in between
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for h in self._handles:
            h._log_fh.close()
        for fh in self._files:
            fh.close()
        self._files.clear()

    # ------------------------------------------------------------------ runs

    def run(self, app_dir: Path, run_config: Mapping[str, Any] | None = None,
            timeout: float = 120.0) -> RunResult:
        """``flwr run`` ``app_dir`` with ``run_config`` overrides and wait till it finished."""
        return self.run_async(app_dir, run_config, timeout=timeout).wait(timeout)

    def run_async(self, app_dir: Path, run_config: Mapping[str, Any] | None = None,
                  timeout: float = 120.0) -> RunHandle:
        """Submit ``app_dir`` with ``flwr run --stream`` and return at once; ``timeout`` is the
        default for :meth:`RunHandle.wait`.

        The app directory (a folder with a pyproject.toml holding ``[tool.flwr.app]``) is copied
        under ``tmp/apps`` first: ``flwr run`` may rewrite a legacy pyproject in place.
        ``run_config`` keys should exist in the app's ``[tool.flwr.app.config]``; values may be
        bool, int, float, str or Path (passed as a TOML file, so no quoting issues).
        """
        self._n_cli += 1
        n = self._n_cli
        src = Path(app_dir).resolve()
        app_copy = self.tmp / "apps" / f"{src.name}-{n}"
        shutil.copytree(src, app_copy, ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", ".venv", "*.fab", ".flwr"))
        cmd = ["flwr", "run", str(app_copy), _CONNECTION, "--stream"]
        if run_config:
            cfg_file = self.tmp / f"run-config-{n}.toml"
            cfg_file.write_bytes(tomli_w.dumps(
                {k: _toml_value(v) for k, v in run_config.items()}).encode())
            cmd += ["--run-config", str(cfg_file)]
        log = self.logs_dir / f"flwr-run-{n}.log"
        fh = log.open("wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=self.tmp, env=self._env("cli"), start_new_session=True)
        handle = RunHandle(self, proc, log, fh, timeout)
        self._handles.append(handle)
        return handle

    def run_status(self, run_id: int) -> tuple[str, str]:
        """``(status, details)`` of a run, e.g. ``("finished:completed", "")``, or
        ``("unknown", <why>)``.

        Asks the SuperLink's Control API directly (protobuf over HTTP, what ``flwr ls`` does, in
        ~20 ms instead of the ~2 s it takes to start the CLI); uses ``flwr ls --format json`` if
        this flwr has no such protobuf module.
        """
        try:
            with warnings.catch_warnings():  # importing flwr imports typer: click deprecations
                warnings.simplefilter("ignore", DeprecationWarning)
                from flwr.proto.control_pb2 import ListRunsRequest, ListRunsResponse
        except ImportError:
            out = self._cli(["ls", _CONNECTION, "--run-id", str(run_id), "--format", "json"],
                            timeout=60, check=False)
            try:
                run = json.loads(out[out.index("{"):out.rindex("}") + 1])["runs"][0]
                return str(run["status"]), str(run.get("status-details", ""))
            except (ValueError, KeyError, IndexError):
                return "unknown", out
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/control/list-runs", method="POST",
            data=ListRunsRequest(run_id=run_id).SerializeToString(),
            headers={"Content-Type": "application/protobuf"})
        try:
            with _NO_PROXY.open(req, timeout=10) as r:
                st = ListRunsResponse.FromString(r.read()).run_dict[run_id].status
        except Exception as err:  # the SuperLink is down, busy, or does not know the run
            return "unknown", repr(err)
        return (f"{st.status}:{st.sub_status}" if st.sub_status else st.status), st.details

    # ------------------------------------------------------------------ nodes

    def node_id(self, i: int) -> int | None:
        """Flower's node id of SuperNode ``i`` (from its log), once it has registered."""
        log = self.logs_dir / f"node-{i}.log"
        if not log.exists():
            return None
        m = _NODE_READY.search(log.read_text(errors="replace"))
        return int(m.group(1)) if m else None

    def node_alive(self, i: int) -> bool:
        proc = self.nodes[i]
        return proc is not None and proc.poll() is None

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` with its SuperExec and ClientApp processes (no goodbye to the
        SuperLink: it finds out only when the heartbeats stop, see the module docstring)."""
        self.killed[i] = time.time()
        self._kill_role(f"node-{i}", self.nodes[i])

    def stop_node(self, i: int, timeout: float = 15.0) -> None:
        """SIGTERM SuperNode ``i``'s process group (a graceful leave: the SuperNode deactivates and
        unregisters itself at the SuperLink), SIGKILL whatever is left after ``timeout`` s."""
        self.killed[i] = time.time()
        proc = self.nodes[i]
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self._kill_role(f"node-{i}", proc)

    def kill_clientapps(self, i: int) -> list[int]:
        """SIGKILL only the ``flwr-clientapp`` processes of SuperNode ``i``; return their pids."""
        pids = []
        for pid in _marked_pids(self.id, f"node-{i}"):
            try:
                cmdline = Path("/proc", str(pid), "cmdline").read_bytes()
            except OSError:
                continue
            if b"flwr-clientapp" in cmdline:
                pids.append(pid)
        _kill(pids, [])
        return pids

    # ------------------------------------------------------------------ waiting and logs

    def wait_for_file(self, path: Path, timeout: float, handle: RunHandle | None = None) -> float:
        """Wait until ``path`` exists; return how long that took. Raises ``TimeoutError`` after
        ``timeout`` s, and ``RuntimeError`` as soon as ``handle``'s ``flwr run`` exits first (both
        with all logs)."""
        t0 = time.monotonic()
        while not Path(path).exists():
            if handle is not None and handle.done():
                raise RuntimeError(f"run ended before {path} appeared\n" + self.logs())
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{path} did not appear within {timeout:.0f} s\n" + self.logs())
            time.sleep(0.05)
        return time.monotonic() - t0

    def logs(self, tail: int = 12000) -> str:
        """Every process's output (the last ``tail`` characters of each log), for assertion
        messages."""
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            text = log.read_text(errors="replace")
            if len(text) > tail:
                text = f"[... {len(text) - tail} chars cut ...]\n" + text[-tail:]
            parts.append(f"===== {log.name} =====\n{text}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _env(self, role: str) -> dict[str, str]:
        home = self.tmp / "flwr-home" / role
        home.mkdir(parents=True, exist_ok=True)
        return {**self._base_env, "FLWR_HOME": str(home), _ENV_ROLE: role}

    def _spawn(self, role: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        fh = (self.logs_dir / f"{role}.log").open("ab")
        self._files.append(fh)
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=self.tmp, env=self._env(role), start_new_session=True)

    def _start_node(self, i: int) -> None:
        cfg = {k: _toml_value(v) for k, v in self._node_config(i).items()}
        cfg_file = self.tmp / f"node-config-{i}.toml"
        cfg_file.write_bytes(tomli_w.dumps(cfg).encode())
        self.node_ports[i] = _free_ports(1)[0]
        self.nodes[i] = self._spawn(f"node-{i}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(self.node_ports[i]),
            "--node-config", str(cfg_file)])

    def _await_superlink(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        assert self.superlink is not None
        while time.monotonic() < deadline and self.superlink.poll() is None:
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return False

    def _bind_failed(self, role: str) -> bool:
        log = self.logs_dir / f"{role}.log"
        text = log.read_text(errors="replace").lower() if log.exists() else ""
        return any(e in text for e in _BIND_ERRORS)

    def _kill_role(self, role: str, proc: subprocess.Popen[bytes] | None) -> None:
        pgids = [proc.pid] if proc is not None and proc.poll() is None else []
        _kill(_marked_pids(self.id, role), pgids)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _write_cli_config(self) -> None:
        home = self.tmp / "flwr-home" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n'
            f'[superlink.{_CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')

    def _cli(self, args: list[str], timeout: float, check: bool = True) -> str:
        """Run ``flwr ARGS`` to completion (bounded by ``timeout``); return its output."""
        self._n_cli += 1
        log = self.logs_dir / f"flwr-{args[0]}-{self._n_cli}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(["flwr", *args], stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, cwd=self.tmp, env=self._env("cli"),
                                    start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        out = log.read_text(errors="replace")
        if check and proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed (rc={proc.returncode}):\n{out}")
        return out
