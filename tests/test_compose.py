"""compose/: checked statically (no Docker engine here), and its nginx.conf run for real."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import yaml
from prometheus_client.parser import text_string_to_metric_families

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


def test_nginx_outwaits_the_heartbeat_and_closes_idle_connections_first(
    compose: dict[str, Any],
) -> None:
    """nginx must not end a held poll or a quiet WebSocket before a heartbeat could come
    (the ping interval plus the ping timeout), and must close an idle upstream connection
    before the gateway does (a request on one the gateway is closing is lost)."""
    nginx = (COMPOSE / "nginx.conf").read_text()
    upstream = re.search(r"upstream gateways \{(.*?)\n    \}", nginx, re.S)
    assert upstream is not None
    idle = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream[1], re.M)
    assert idle is not None, "nginx's own default (60 s) is not written where it is checked"
    for name in GATEWAYS:
        environment = compose["services"][name]["environment"]
        keep = environment.get(f"{ENV_PREFIX}KEEP_ALIVE_TIMEOUT", Settings().keep_alive_timeout)
        assert int(idle[1]) < int(keep), name
    heartbeat = socketio.AsyncServer().eio  # the gateway's: python-socketio's defaults
    for timeout in re.findall(r"proxy_(?:read|send)_timeout (\d+)s;", nginx):
        assert int(timeout) > heartbeat.ping_interval + heartbeat.ping_timeout


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: where in the container, from which path of compose/."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (COMPOSE / source).resolve()
    return mounts


def _dashboard() -> dict[str, Any]:
    loaded = json.loads((COMPOSE / "grafana" / "dashboards" / "socketio-kafka.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _walk(node: object) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``node``, itself included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_grafana_is_provisioned_with_the_prometheus_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    image, _, tag = grafana["image"].partition(":")
    assert image == "grafana/grafana"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin the image to a release"
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [datasource] = datasources["datasources"]
    # Grafana reaches Prometheus by its service name, on the port it listens on.
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    providers = yaml.safe_load((provisioning / "dashboards" / "socketio-kafka.yml").read_text())
    [provider] = providers["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "socketio-kafka.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/socketio-kafka.json"
    # Every panel, query and variable reads the provisioned datasource.
    dashboard = _dashboard()
    sources = [o["datasource"] for o in _walk(dashboard) if "datasource" in o]
    assert sources
    assert all(s == {"type": "prometheus", "uid": datasource["uid"]} for s in sources)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and variable query."""
    exprs = [o["expr"] for o in _walk(dashboard) if isinstance(o.get("expr"), str)]
    for variable in dashboard["templating"]["list"]:
        exprs.append(variable["query"]["query"])
    return exprs


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_every_metric_the_dashboard_plots_is_one_a_node_exports(
    kafka_url: str, channel: str
) -> None:
    exprs = _exprs(_dashboard())
    plotted = {
        name
        for expr in exprs
        for name in re.findall(r"\b(?:socketio_kafka|process|python_gc)_\w+", expr)
    }
    assert "histogram_quantile" in " ".join(exprs)
    async with gateway_cluster(kafka_url, channel, nodes=1) as [node]:
        # A client connected and publishing while scraped: every family has its samples.
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(node.url, transports=["websocket"], auth={"recovery": False})
        try:
            ack = await client.call("publish", {"room": "r", "event": "e", "data": 1})
            assert ack["ok"] is True
            exported = await _exported_once_lag_is_known(node.url)
        finally:
            await client.disconnect()
            await client.shutdown()
    assert plotted <= exported, sorted(plotted - exported)
    # Each family of the node's own has a panel (a histogram through its buckets); of the
    # process's, those plotted are exported.
    own = {name for name in exported if name.startswith("socketio_kafka_")}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in own}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in plotted}


async def _exported_once_lag_is_known(url: str) -> set[str]:
    """The sample names of a node's /metrics, once its consumer has fetched (the lag of a
    partition is known from then on)."""
    deadline = asyncio.get_running_loop().time() + 30
    async with httpx.AsyncClient() as http:
        while True:
            text = (await http.get(f"{url}/metrics", timeout=5)).text
            exported = {
                sample.name
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if "socketio_kafka_consumer_lag" in exported:
                return exported
            assert asyncio.get_running_loop().time() < deadline, "no lag exported"
            await asyncio.sleep(0.1)


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


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_the_demo_page_is_served_through_nginx_and_metrics_are_not(proxied: str) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{proxied}/")
        assert page.status_code == 200
        assert '<script src="/static/socket.io.min.js">' in page.text
        script = await http.get(f"{proxied}/static/socket.io.min.js")
        assert script.status_code == 200, script.text  # .ci/install's npm ci put it there
        assert "node" in (await http.get(f"{proxied}/node")).json()
        assert (await http.get(f"{proxied}/metrics")).status_code == 404
