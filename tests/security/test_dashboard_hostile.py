"""A tired operator's dashboard command is one clear line (twin/dashboard/__main__.py): a port another
dashboard already holds, an address that is not this machine's and a port number out of range are named
with what was expected, never a tornado traceback; with `--live`, the mirror started before the bind
failed is closed (what it received is committed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

from data_pipeline.errors import InputError
from twin.dashboard.__main__ import main


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from data_pipeline.record import record

    path = tmp_path_factory.mktemp("dash-hostile") / "p.zarr"
    record("Pendulum-v1", 1, str(path), seed=0, max_episode_steps=10, progress=False).close()
    return str(path)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_named(store: str, taken_port: int) -> None:
    with pytest.raises(InputError, match=f"--port {taken_port}: cannot listen there .*pick another --port"):
        main(["--store", store, "--port", str(taken_port)])


@pytest.mark.parametrize("port", ["65536", "-1"])
def test_a_port_out_of_range_is_named(store: str, port: str) -> None:
    with pytest.raises(InputError, match=f"--port {port}: expected a port number 1..65535"):
        main(["--store", store, "--port", port])


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line(store: str, taken_port: int, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "twin.dashboard", "--store", store, "--port", str(taken_port)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"python -m twin.dashboard: error: --host 127.0.0.1 --port {taken_port}: cannot listen there")


def test_the_page_accepts_only_named_origins_on_any_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound to 0.0.0.0 the websocket still refuses other web pages: only the bind address, loopback and each
    --allow-origin are accepted, never "*" (another page the operator opens could read the plant's data)."""
    import panel as pn

    from twin.dashboard.__main__ import serve

    seen: dict = {}

    def fake_serve(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(pn, "serve", fake_serve)
    sources = types.SimpleNamespace(feed=None)
    with pytest.raises(InputError):
        serve(sources, "0.0.0.0", 5006, ["scada-pc.plant.local:5006"])  # type: ignore[arg-type]
    assert seen["websocket_origin"] == ["0.0.0.0:5006", "localhost:5006", "127.0.0.1:5006",
                                        "scada-pc.plant.local:5006"]
