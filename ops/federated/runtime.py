"""Flower's deployment runtime on one machine: a real ``flower-superlink``, one ``flower-supernode`` per site, and
``flwr run`` to submit the app — the same processes a hospital network runs, started on loopback for the demo and
tests (commands as in flwr 1.42: one HTTP port per SuperLink for Fleet, Control and ServerAppIo).

Every process gets its own session (process group), so stopping one also stops the ClientApp/ServerApp
subprocesses Flower spawns; :meth:`Federation.close` stops them all (SIGTERM, then SIGKILL) and is called from
``__exit__``, also when the body raised. Every wait has a deadline. Ports are picked free at start.

The server side (SuperLink and its ServerApp) runs with ``server_guard/`` on ``PYTHONPATH`` and the sites' roots
in ``HISTOFACTORY_DENY_PATHS``: any attempt to read a site's folder from there fails and is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "flower_app"
GUARD_DIR = Path(__file__).resolve().parent / "server_guard"
CONNECTION = "histofactory"
# What the ServerApp writes to its out-dir (the lineage last: its presence means the run finished).
LINEAGE_FILE = "lineage.json"
MODEL_FILE = "global.pt"
MODEL_FORMAT = "histofactory-cgan-1"


class FederationError(RuntimeError):
    """The federation could not start, a run failed, or a wait ran out of time (the message says which)."""


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (so tests use the venv's Flower)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FederationError(f"`{name}` not found beside {sys.executable} or on PATH; install flwr (pip install flwr)")
    return found


def make_auth_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` and
    ``flwr supernode register`` accept); returns (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}_key", folder / f"{name}_key.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a SuperLink certificate for 127.0.0.1/localhost (loopback demo and tests; production
    certificates come from the cluster's issuer, see deploy/README.md); returns (ca, cert, key) PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "histofactory federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    import ipaddress

    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


@dataclass(frozen=True)
class Site:
    """A hospital: its name and the folder only its SuperNode reads (several joined by ``os.pathsep``)."""

    name: str
    root: Path | str


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Federation:
    """A SuperLink plus one SuperNode per site on loopback; a context manager that always cleans up.

    Args:
        workdir: Scratch folder (Flower home, logs, keys).
        sites: The sites; each gets a SuperNode with ``site`` and ``site-root`` in its node config.
        auth: Start the SuperLink with ``--enable-supernode-auth``; only sites registered with
            :meth:`register` (done for every site in :meth:`start`) may join. Flower requires TLS for it, so
            ``auth`` turns ``tls`` on.
        tls: Encrypt every link (Fleet, Control, ServerAppIo) with a throwaway CA made by :func:`make_tls`.
        address: Attach to a running SuperLink (``host:port``, e.g. the cluster's Service) instead of starting
            processes; ``root_certificates`` is its CA file (unset = insecure, for loopback only). Sites are then
            whatever SuperNodes that SuperLink admits.
        start_timeout: Seconds to wait for the SuperLink port and for every SuperNode to connect.
    """

    workdir: Path
    sites: list[Site]
    auth: bool = False
    tls: bool = False
    address: str | None = None
    root_certificates: str | None = None
    start_timeout: float = 60.0
    port: int = 0
    procs: list[_Proc] = field(default_factory=list)

    # -- processes ------------------------------------------------------------------------------------------

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr_home"

    @property
    def deny_log(self) -> Path:
        return self.workdir / "server_denied.log"

    def _env(self, server: bool) -> dict[str, str]:
        env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        # Flower spawns its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("HISTOFACTORY_DENY_PATHS", None)
        if server:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), env.get("PYTHONPATH")]))
            env["HISTOFACTORY_DENY_PATHS"] = os.pathsep.join(str(s.root) for s in self.sites)
            env["HISTOFACTORY_DENY_LOG"] = str(self.deny_log)
        return env

    def _spawn(self, name: str, args: list[str], server: bool) -> _Proc:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(server),
                cwd=self.workdir,
                start_new_session=True,  # own process group: stopping it stops Flower's app subprocesses too
            )
        proc = _Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start(self) -> Federation:
        """Start the SuperLink, register the sites (with ``auth``) and start their SuperNodes; wait until all
        are connected."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.address:
            self._write_flower_config()
            return self
        self.port = free_port()
        self.tls = self.tls or self.auth
        if self.tls:
            self.ca, cert, key = make_tls(self.workdir / "tls")
            security = ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        else:
            security = ["--insecure"]
        self._write_flower_config()
        args = [
            _bin("flower-superlink"),
            *security,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",  # the app's code is installed; never reach the internet
        ]
        link = self._spawn("superlink", args + (["--enable-supernode-auth"] if self.auth else []), server=True)
        self._wait(lambda: port_open(self.port), f"SuperLink on port {self.port}", link)
        for site in self.sites:
            self.start_supernode(site)
        self.wait_for_nodes(len(self.sites))
        return self

    def start_supernode(self, site: Site, register: bool = True) -> _Proc:
        """Start the SuperNode of ``site`` (registering its key first when auth is on, unless ``register`` is
        False: an unregistered node, which the SuperLink must refuse)."""
        args = [
            _bin("flower-supernode"),
            *(["--root-certificates", str(self.ca)] if self.tls else ["--insecure"]),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"site={json.dumps(site.name)} site-root={json.dumps(str(site.root))} "
            f"progress-file={json.dumps(str(self.workdir / 'logs' / f'{site.name}.progress'))}",
        ]
        if self.auth:
            private, public = make_auth_keys(self.workdir / "keys", site.name)
            if register:
                self.register(public, site.name)
            args += ["--auth-supernode-private-key", str(private)]
        return self._spawn(f"supernode-{site.name}", args, server=False)

    def register(self, public_key: Path, name: str) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        self._flwr(["supernode", "register", str(public_key), CONNECTION, "--name", name, "--format", "json"], 60)

    def nodes(self) -> list[dict]:
        """The SuperNodes the SuperLink knows (``flwr supernode list --format json``)."""
        return self._flwr(["supernode", "list", CONNECTION, "--format", "json"], timeout=60).get("nodes", [])

    def online_nodes(self) -> int:
        return sum(1 for n in self.nodes() if str(n.get("status", "")).lower() == "online")

    def wait_for_nodes(self, n: int) -> None:
        self._wait(lambda: self.online_nodes() >= n, f"{n} SuperNodes online", None)

    def proc(self, name: str) -> _Proc:
        return next(p for p in self.procs if p.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL one process and everything it spawned, now (a hospital node that crashed)."""
        p = self.proc(name)
        family = _descendants(p.popen.pid)
        _kill_group(p.popen, signal.SIGKILL)
        _kill_all(family, signal.SIGKILL)
        p.popen.wait(timeout=10)

    def close(self) -> None:
        """Stop every process this federation started and every process those spawned (Flower detaches its
        SuperExec and app processes into their own sessions): SIGTERM, up to 5 s grace, then SIGKILL."""
        family = [d for p in self.procs for d in _descendants(p.popen.pid)]
        for p in reversed(self.procs):
            _kill_group(p.popen, signal.SIGTERM)
        _kill_all(family, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(p.popen, signal.SIGKILL)
                p.popen.wait(timeout=10)
        _kill_all(family, signal.SIGKILL)

    def __enter__(self) -> Federation:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------------------------

    def run(self, run_config: dict[str, object], out_dir: Path, timeout: float) -> dict:
        """Submit the Flower App with ``flwr run`` and wait until the ServerApp wrote ``out_dir/lineage.json``.

        Raises:
            FederationError: the submission failed, the run ended without output, or ``timeout`` passed; the
                message carries the tail of the SuperLink log.
        """
        overrides = self.workdir / f"run-{time.time_ns()}.toml"  # a file: the inline form splits values on spaces
        overrides.write_text(_toml({**run_config, "out-dir": str(out_dir)}))
        out = self._flwr(["run", str(APP_DIR), CONNECTION, "--run-config", str(overrides), "--format", "json"], 120)
        run_id = out.get("run-id")
        lineage = out_dir / LINEAGE_FILE
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + 20
        while time.monotonic() < deadline:
            if lineage.exists():
                return {**json.loads(lineage.read_text()), "flower_run_id": run_id}
            if time.monotonic() > next_status:  # each `flwr list` is a CLI start (seconds of CPU): ask rarely
                next_status = time.monotonic() + 20
                status = self._run_status(run_id)
                if status.startswith("finished") and not lineage.exists():
                    time.sleep(2)
                    if not lineage.exists():
                        raise FederationError(f"Flower run {run_id} ended ({status}) without output; {self.tail()}")
            time.sleep(0.5)
        down = [p.name.removeprefix("supernode-") for p in self.procs if p.popen.poll() is not None]
        raise FederationError(
            f"Flower run {run_id} did not finish within {timeout:.0f} s (sites whose SuperNode is down: "
            f"{down or 'none'}); {self.tail()}"
        )

    def _run_status(self, run_id: object) -> str:
        try:
            runs = self._flwr(["list", CONNECTION, "--run-id", str(run_id), "--format", "json"], 30).get("runs", [])
            return str(runs[0].get("status", "")).lower() if runs else ""
        except FederationError:
            return ""

    def tail(self, lines: int = 30) -> str:
        """The last lines of the SuperLink log, for error messages."""
        log = self.workdir / "logs" / "superlink.log"
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        return "SuperLink log tail:\n" + "\n".join(text)

    # -- helpers --------------------------------------------------------------------------------------------

    def _write_flower_config(self) -> None:
        """The ``flwr`` CLI's connection (``$FLWR_HOME/config.toml``, Flower >= 1.26) named ``histofactory``."""
        address = self.address or f"127.0.0.1:{self.port}"
        ca = self.root_certificates if self.address else (str(self.ca) if self.tls else None)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n'
            + (f"root-certificates = {json.dumps(ca)}\n" if ca else "insecure = true\n")
        )

    def _flwr(self, args: list[str], timeout: float) -> dict:
        """Run a ``flwr`` command with ``--format json``; its answer, or an error with Flower's message (the CLI
        exits 0 on failures and reports them as ``"success": false``)."""
        try:
            done = subprocess.run(
                [_bin("flwr"), *args],
                env=self._env(server=False),
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise FederationError(f"`flwr {' '.join(args[:2])}` did not answer within {timeout:.0f} s") from err
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            answer = {"success": False, "error-message": done.stdout[-2000:] + done.stderr[-2000:]}
        if done.returncode or not answer.get("success", False):
            raise FederationError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def _wait(self, ready, what: str, proc: _Proc | None) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.popen.poll() is not None:
                raise FederationError(
                    f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}; "
                    f"log: {proc.log.read_text(errors='replace')[-2000:]}"
                )
            try:
                if ready():
                    return
            except FederationError:
                pass
            time.sleep(0.5)
        raise FederationError(f"timed out after {self.start_timeout:.0f} s waiting for {what}; {self.tail()}")


def _toml(values: dict[str, object]) -> str:
    """Flat key = value TOML (strings as JSON strings, which TOML basic strings accept)."""
    lines = []
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _descendants(pid: int) -> list:
    """Every live process below ``pid`` (a snapshot: psutil handles, safe against pid reuse)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_all(procs: list, sig: int) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    if sig == signal.SIGKILL:
        psutil.wait_procs(procs, timeout=10)


def _kill_group(popen: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)
