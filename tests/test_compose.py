"""compose/: checked statically (no Docker engine here), and its nginx.conf run for real."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import socketio
import yaml

from socketio_kafka.gateway.settings import ENV_PREFIX, Settings

from .support.cluster import GatewayProcess, free_port, gateway_cluster
from .support.waiting import wait_until

COMPOSE = Path(__file__).resolve().parents[1] / "compose"
GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    loaded = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_has_the_deployment(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    assert {"kafka", "redis", "nginx", "prometheus", *GATEWAYS} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_kafka_cluster_id_is_one_kafka_formats(compose: dict[str, object]) -> None:
    """KRaft's storage format takes a base64url UUID (16 bytes); anything else stops Kafka."""
    services = compose["services"]
    assert isinstance(services, dict)
    cluster_id = services["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert len(cluster_id) == 22
    assert not cluster_id.startswith("-")


def test_gateways_are_configured_only_with_variables_they_read(
    compose: dict[str, object],
) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    services = compose["services"]
    assert isinstance(services, dict)
    for name in GATEWAYS:
        gateway = services[name]
        assert set(gateway["environment"]) <= known, name
        assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
        assert gateway["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_nginx_and_prometheus_reach_every_gateway() -> None:
    nginx = (COMPOSE / "nginx.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w-]+):8000\b", nginx, re.MULTILINE)
    assert upstream == GATEWAYS
    assert "proxy_set_header Upgrade $http_upgrade" in nginx
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{g}:8000" for g in GATEWAYS]


def _nginx() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(path).exists(), "nginx is required (apt-get install nginx)"
    return path


def _render(prefix: Path, port: int, gateways: list[GatewayProcess]) -> Path:
    """compose/nginx.conf with loopback addresses and paths under ``prefix``."""
    conf = (COMPOSE / "nginx.conf").read_text()
    for name, gateway in zip(GATEWAYS, gateways, strict=True):
        conf = conf.replace(f"server {name}:8000", f"server 127.0.0.1:{gateway.port}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/run/nginx.pid", str(prefix / "nginx.pid"))
    conf = conf.replace("/var/log/nginx", str(prefix)).replace("/var/cache/nginx", str(prefix))
    conf = conf.replace("worker_connections 10240;", "worker_connections 1024;")
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    fake = [GatewayProcess("kafka://x:1", "c", port=p) for p in (1, 2, 3)]
    conf = _render(tmp_path, free_port(), fake)
    checked = subprocess.run(
        [_nginx(), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


@pytest.fixture
async def proxied(kafka_url: str, channel: str, tmp_path: Path) -> AsyncIterator[str]:
    async with gateway_cluster(kafka_url, channel, nodes=3) as gateways:
        port = free_port()
        conf = _render(tmp_path, port, gateways)
        nginx = await asyncio.create_subprocess_exec(
            _nginx(),
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
            stderr=asyncio.subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as http:

                async def up() -> bool:
                    try:
                        return (await http.get(f"{url}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                deadline = asyncio.get_running_loop().time() + 15
                while not await up():
                    assert nginx.returncode is None, (tmp_path / "error.log").read_text()
                    assert asyncio.get_running_loop().time() < deadline, "nginx did not serve"
                    await asyncio.sleep(0.1)
            yield url
        finally:
            nginx.terminate()
            await nginx.wait()


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_clients_through_nginx_upgrade_and_get_events(proxied: str) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{proxied}/readyz")).json() == {"ready": True, "reasons": []}
    received: dict[str, list[object]] = {}
    clients = []
    for transports in (None, ["websocket"], ["polling"]):
        client = socketio.AsyncClient(reconnection=False)
        name = ",".join(transports or ["polling+upgrade"])
        received[name] = []
        client.on("news", received[name].append)
        await client.connect(proxied, transports=transports, auth={"recovery": False})
        assert await client.call("join", {"room": "r"}) == {"ok": True}
        clients.append(client)
    try:
        # The default client starts on long-polling and upgrades to WebSocket: both legs
        # must reach the same node (sticky) and nginx must pass the Upgrade.
        await wait_until(lambda: clients[0].transport() == "websocket", 10, "the upgrade")
        sender = clients[1]
        ack = await sender.call("publish", {"room": "r", "event": "news", "data": 1})
        assert ack["ok"] is True, ack
        await wait_until(
            lambda: received["polling+upgrade"] == [1] and received["polling"] == [1],
            15,
            "the publish through nginx",
        )
    finally:
        for client in clients:
            await client.disconnect()
            await client.shutdown()
