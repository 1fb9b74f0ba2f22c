"""Start real HTTP servers on 127.0.0.1 for the adapter tests, and stop them.

- :class:`ThreadServer`: an ASGI app under uvicorn in a thread of this process,
  on a socket bound to a free port first (so the port is known before start).
- :class:`ProcessServer`: ``semcache serve`` as a real subprocess; it prints the
  address it listens on, and is stopped by its PID at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn


class ThreadServer:
    """Serve ``app`` with uvicorn in a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``.
    """

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="auto", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
            name=f"uvicorn-{self.port}",
        )

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError(f"the test server on port {self.port} did not stop")

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessServer:
    """Run ``semcache serve ...`` as a subprocess and wait until it listens.

    The command must print a line containing ``listening on http://...``;
    ``url`` is that address. ``stop`` sends SIGTERM to the recorded PID (then
    SIGKILL if it does not exit).
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "semcache.cli", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.pid: int | None = None
        self.url = ""
        self.output: list[str] = []
        self._pump: threading.Thread | None = None

    def start(self, timeout: float = 120.0) -> ProcessServer:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if "listening on " in line and not found.is_set():
                    self.url = line.split("listening on ", 1)[1].split()[0]
                    found.set()

        self._pump = threading.Thread(target=pump, daemon=True, name=f"pump-{self.pid}")
        self._pump.start()
        if not found.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("semcache serve did not start:\n" + "".join(self.output))
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll ``GET /readyz`` until it answers 200; returns the seconds waited."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("semcache serve exited:\n" + "".join(self.output))
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("semcache serve never became ready:\n" + "".join(self.output))

    def stop(self) -> int | None:
        if self.proc is None or self.pid is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._pump is not None:
            self._pump.join(timeout=10)  # it ends at EOF of the dead process's output
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
