"""Real processes for the tests: a private redis-server and `jobwire serve`s on
free ports, tokens minted with `jobwire token`, and a TCP proxy that can drop
answers or terminate TLS.

The binary is $JOBWIRE_BIN, by default the repository's target/debug/jobwire
(`cargo build -p jobwire-cli`). Nothing is mocked: every test talks to a real
gateway on a real Redis.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("JOBWIRE_BIN") or str(REPO / "target" / "debug" / "jobwire")
SECRET = "python-client-test-secret-0123456789"

ALL_SCOPES = ("jobs:read", "jobs:write", "worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Polls ``check`` until it is true (exceptions count as false)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def token(sub: str = "alice", scopes: Sequence[str] = ALL_SCOPES, ttl: str = "10m") -> str:
    args = [BIN, "token", "--sub", sub, "--ttl", ttl]
    for scope in scopes:
        args += ["--scope", scope]
    out = subprocess.run(
        args, env={"JOBWIRE_JWT_SECRET": SECRET}, capture_output=True, check=True, text=True
    )
    return out.stdout.strip()


def quick_token(sub: str, ttl_seconds: int, scopes: Sequence[str] = ALL_SCOPES) -> str:
    """The token `jobwire token` makes (HS256, `scope` space-separated), minted
    in-process: for token providers that run on a deadline, where starting a
    process could take longer than a loaded host leaves before expiry."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": sub, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_seconds}
    signed = part(b'{"typ":"JWT","alg":"HS256"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + part(signature)


class Redis:
    """A private redis-server whose data survives a SIGKILL (AOF, fsync always),
    so it can be killed and restarted on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="jobwire-py-redis-")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, "redis-server")

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """A `jobwire serve` (or any `jobwire` command) on a port of its own."""

    running: ClassVar[List[Server]] = []

    def __init__(
        self,
        redis: Redis,
        port: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.redis = redis
        self.port = port or free_port()
        self.env = env or {}
        self.proc: Optional[subprocess.Popen[bytes]] = None
        # Kept open for the server's whole life (and every restart).
        self.log = tempfile.NamedTemporaryFile(prefix="jobwire-py-serve-", suffix=".log")  # noqa: SIM115
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JOBWIRE_BIND": f"127.0.0.1:{self.port}",
            "JOBWIRE_JWT_SECRET": SECRET,
            "JOBWIRE_PARTITIONS": "4",
            "REDIS_URL": self.redis.url,
            "RUST_LOG": "warn",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [BIN, "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        Server.running.append(self)
        wait_until(self.ready, f"jobwire serve on {self.port}")

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
            return bool(r.status == 200)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
            self.proc = None
        if self in Server.running:
            Server.running.remove(self)

    def restart(self) -> None:
        self.kill()
        self.start()

    @classmethod
    def kill_all(cls) -> None:
        for server in list(cls.running):
            server.kill()


class Proxy:
    """A TCP proxy in front of a server. With ``drop_answers`` set, it
    forwards requests but cuts the connection instead of relaying the answer:
    the request was applied, the client never hears so. With ``tls`` it
    terminates TLS with that context (a TLS load balancer)."""

    def __init__(self, target_port: int, tls: Optional[ssl.SSLContext] = None) -> None:
        self.target_port = target_port
        self.tls = tls
        self.drop_answers = False
        self.dropped = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return

        def pump(src: socket.socket, dst: socket.socket, answers: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if answers and self.drop_answers:
                        self.dropped += 1
                        break
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
        pump(upstream, client, True)


def make_ca(directory: str) -> Dict[str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl),
    with the extensions strict verifiers (Python >= 3.13) insist on."""
    d = Path(directory)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca, key = d / "ca.key", d / "ca.pem", d / "server.key"
    csr, cert, ext = d / "server.csr", d / "server.pem", d / "server.ext"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=jobwire test CA", "-keyout", str(ca_key), "-out", str(ca),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return {"ca": str(ca), "cert": str(cert), "key": str(key)}
