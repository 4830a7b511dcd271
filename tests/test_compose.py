"""compose/: checked statically (no Docker engine here), and its nginx.conf run for real."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from socketio_kafka.gateway.cli import build_parser, settings_from
from socketio_kafka.gateway.openfiles import OWN_DESCRIPTORS
from socketio_kafka.gateway.settings import ENV_PREFIX, Settings

from .support.cluster import GatewayProcess, free_port, gateway_cluster
from .support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose"
GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]
#: What docker compose waits between the stop signal and SIGKILL unless told.
_COMPOSE_STOP_GRACE_S = 10.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@dataclasses.dataclass
class Directive:
    """One nginx directive: its name, its arguments, its block's directives if it has one."""

    name: str
    args: list[str]
    block: list[Directive] | None = None


def _nginx_directives(tokens: Iterator[str]) -> list[Directive]:
    directives: list[Directive] = []
    words: list[str] = []
    for token in tokens:
        if token == "}":
            return directives
        if token in (";", "{"):
            block = _nginx_directives(tokens) if token == "{" else None
            directives.append(Directive(words[0], words[1:], block))
            words = []
        else:
            words.append(token.strip("\"'"))
    assert not words, f"unterminated directive {words}"
    return directives


def _nginx_conf(text: str | None = None) -> list[Directive]:
    """compose/nginx.conf as directives (no nginx.conf here quotes a "#", "{", "}" or ";")."""
    text = (COMPOSE / "nginx.conf").read_text() if text is None else text
    uncommented = re.sub(r"#[^\n]*", "", text)
    return _nginx_directives(iter(re.findall(r"[{};]|[^\s{};]+", uncommented)))


def _find(block: list[Directive], name: str, *args: str) -> list[Directive]:
    return [d for d in block if d.name == name and d.args[: len(args)] == list(args)]


def _one(block: list[Directive], name: str, *args: str) -> Directive:
    [directive] = _find(block, name, *args)
    return directive


def _inner(block: list[Directive], name: str, *args: str) -> list[Directive]:
    inner = _one(block, name, *args).block
    assert inner is not None, name
    return inner


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: object, *, bare: bool) -> float:
    """A compose duration ("1m30s") or, ``bare``, an nginx time ("75s", "1m", "75")."""
    if bare and re.fullmatch(r"\d+", str(text)):
        return float(str(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text))
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _nginx_size(text: str) -> int:
    """An nginx size: "2m", "512k", "1048576"."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert match, f"not a size: {text!r}"
    return int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ")


def _dockerfile() -> list[tuple[str, str]]:
    """compose/Dockerfile's instructions of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (COMPOSE / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def _command() -> list[str]:
    [command] = [json.loads(rest) for word, rest in _dockerfile() if word == "CMD"]
    assert isinstance(command, list), "CMD in exec form: the node gets SIGTERM itself"
    return command


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as compose hands it on: every value a string or a number."""
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "a mapping, as every service here writes it"
    for name, value in environment.items():
        assert isinstance(value, str | int | float), name
        assert not isinstance(value, bool), name  # compose refuses true/false
    return {name: str(value) for name, value in environment.items()}


def _settings(service: dict[str, Any]) -> Settings:
    """A gateway service's settings: the image's command parsed by the CLI's own parser,
    and its environment by the parser `serve` reads it with."""
    script, *argv = _command()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert script in scripts
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the image's command does not parse: {argv}")
    return settings_from(args, _environment(service))


def test_compose_has_the_deployment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    assert {"kafka", "redis", "nginx", "prometheus", *GATEWAYS} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_gateways_settings_parse_as_a_node_reads_them(compose: dict[str, Any]) -> None:
    """A malformed or out-of-range variable, or a flag `serve` does not have, stops a node
    at start: here it fails the test."""
    for name in GATEWAYS:
        settings = _settings(compose["services"][name])
        assert (settings.host, settings.port) == ("0.0.0.0", 8000), name
        assert settings.kafka == "kafka://kafka:9092", name


def test_the_image_runs_serve_unprivileged_with_the_gateway_extra() -> None:
    instructions = _dockerfile()
    [user, *_] = [rest for word, rest in reversed(instructions) if word == "USER"]
    assert user.split(":")[0] not in ("root", "0"), user
    installs = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    extras = {
        extra
        for install in installs
        for argument in shlex.split(install)
        for extra in re.findall(r"^\.\[([\w,-]+)\]$", argument)
    }
    assert extras == {"gateway"}, "serve needs the gateway extra, and nothing of the tests"
    assert _command()[1] == "serve"


def test_gateways_outlast_their_drain_and_hold_their_connections(
    compose: dict[str, Any],
) -> None:
    """Docker's SIGKILL must not cut a drain short, and the open-file limit must hold every
    connection a node allows (Docker 29 starts containers at 1024)."""
    for name in GATEWAYS:
        service = compose["services"][name]
        settings = _settings(service)
        grace = _seconds(service.get("stop_grace_period", "10s"), bare=False)
        assert grace > settings.drain_timeout, name
        nofile = service["ulimits"]["nofile"]
        assert nofile["soft"] >= settings.max_connections + OWN_DESCRIPTORS, name
        assert nofile["hard"] >= nofile["soft"], name


def test_kafka_replication_fits_the_brokers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    brokers = sum(
        "broker" in _environment(s).get("KAFKA_PROCESS_ROLES", "").split(",")
        for s in services.values()
    )
    assert brokers >= 1
    for name, service in services.items():
        for variable, value in _environment(service).items():
            if variable.endswith(("_REPLICATION_FACTOR", "_MIN_ISR")):
                assert 1 <= int(value) <= brokers, f"{name}: {variable}"
    for name in GATEWAYS:
        settings = _settings(services[name])
        for replicas in (settings.replication_factor, settings.min_insync_replicas):
            assert replicas is None or replicas <= brokers, name


def test_every_port_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """The gateways run without a JWT key: nothing is reachable from other hosts unless
    someone writes it so (compose/README.md)."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_redis_starts_only_on_request(compose: dict[str, Any]) -> None:
    """Nothing uses it (the benchmarks start their own): it must not take port 6379."""
    assert compose["services"]["redis"]["profiles"] == ["redis"]


def test_kafka_cluster_id_is_one_kafka_formats(compose: dict[str, object]) -> None:
    """KRaft's storage format takes a base64url UUID (16 bytes); anything else stops Kafka."""
    services = compose["services"]
    assert isinstance(services, dict)
    cluster_id = services["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert len(cluster_id) == 22
    assert not cluster_id.startswith("-")


def test_gateways_are_configured_only_with_variables_they_read(
    compose: dict[str, Any],
) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    services = compose["services"]
    assert isinstance(services, dict)
    for name in GATEWAYS:
        gateway = services[name]
        assert set(gateway["environment"]) <= known, name
        assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
        assert gateway["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_nginx_and_prometheus_reach_every_gateway(compose: dict[str, Any]) -> None:
    http = _inner(_nginx_conf(), "http")
    upstream = _inner(http, "upstream", "gateways")
    assert [d.args[0] for d in _find(upstream, "server")] == [f"{g}:8000" for g in GATEWAYS]
    socket_io = _inner(_inner(http, "server"), "location", "/socket.io/")
    assert ["Upgrade", "$http_upgrade"] in [d.args for d in _find(socket_io, "proxy_set_header")]
    # nginx lets clients in once every node is ready.
    depends = compose["services"]["nginx"]["depends_on"]
    assert {g: depends[g]["condition"] for g in GATEWAYS} == dict.fromkeys(
        GATEWAYS, "service_healthy"
    )
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"  # the gateway's route
    [static] = job["static_configs"]
    assert static["targets"] == [f"{g}:8000" for g in GATEWAYS]


def test_nginx_starts_and_runs_without_a_gateway(compose: dict[str, Any]) -> None:
    """A gateway's name is resolved at run time ("resolve", open-source nginx 1.27.3 on,
    with a shared zone and a resolver): resolved only at start, one gateway stopped kept
    nginx from starting ("host not found in upstream")."""
    http = _inner(_nginx_conf(), "http")
    assert _one(http, "resolver").args[0] == "127.0.0.11"  # Docker's embedded DNS
    upstream = _inner(http, "upstream", "gateways")
    assert _find(upstream, "zone")
    assert all("resolve" in d.args for d in _find(upstream, "server"))
    image, _, tag = compose["services"]["nginx"]["image"].partition(":")
    assert image == "nginx"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin the image to a release"
    assert tuple(map(int, tag.split("."))) >= (1, 27, 3)


def test_nginx_holds_its_connections_and_stops_in_time(compose: dict[str, Any]) -> None:
    """Each worker may open its worker_connections (Docker 29 starts it at 1024 files),
    and a stop closes open WebSockets before docker's SIGKILL."""
    conf = _nginx_conf()
    service = compose["services"]["nginx"]
    rlimit = int(_one(conf, "worker_rlimit_nofile").args[0])
    assert rlimit >= int(_one(_inner(conf, "events"), "worker_connections").args[0])
    assert service["ulimits"]["nofile"]["hard"] >= rlimit
    shutdown = _seconds(_one(conf, "worker_shutdown_timeout").args[0], bare=True)
    grace = _seconds(service.get("stop_grace_period", "10s"), bare=False)
    assert shutdown < grace


def test_nginx_passes_the_largest_post_a_gateway_accepts(compose: dict[str, Any]) -> None:
    http = _inner(_nginx_conf(), "http")
    # nginx's own default is 1m; a polling POST over it gets nginx's 413, not the gateway.
    [body] = [_nginx_size(d.args[0]) for d in _find(http, "client_max_body_size")] or [2**20]
    for name in GATEWAYS:
        assert body >= _settings(compose["services"][name]).max_payload_bytes, name


def test_nginx_outwaits_the_heartbeat_and_closes_idle_connections_first(
    compose: dict[str, Any],
) -> None:
    """nginx must not end a held poll or a quiet WebSocket before a heartbeat could come
    (the ping interval plus the ping timeout), and must close an idle upstream connection
    before the gateway does (a request on one the gateway is closing is lost)."""
    http = _inner(_nginx_conf(), "http")
    upstream = _inner(http, "upstream", "gateways")
    idle = _find(upstream, "keepalive_timeout")
    assert idle, "nginx's own default (60 s) is not written where it is checked"
    for name in GATEWAYS:
        keep = _settings(compose["services"][name]).keep_alive_timeout
        assert _seconds(idle[0].args[0], bare=True) < keep, name
    heartbeat = socketio.AsyncServer().eio  # the gateway's: python-socketio's defaults
    socket_io = _inner(_inner(http, "server"), "location", "/socket.io/")
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        timeout = _seconds(_one(socket_io, directive).args[0], bare=True)
        assert timeout > heartbeat.ping_interval + heartbeat.ping_timeout, directive


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
        # A loopback address has no name to resolve, and Debian's nginx (before 1.27.3)
        # refuses "resolve": it goes with the name. The zone and the resolver stay (any
        # nginx parses them; nothing is resolved through 127.0.0.11 here).
        server = f"server {name}:8000 resolve "
        assert server in conf, server
        conf = conf.replace(server, f"server 127.0.0.1:{gateway.port} ")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/run/nginx.pid", str(prefix / "nginx.pid"))
    conf = conf.replace("/var/log/nginx", str(prefix)).replace("/var/cache/nginx", str(prefix))
    conf = conf.replace("worker_connections 10240;", "worker_connections 1024;")
    # Above this user's hard limit nginx's setrlimit fails (an alert, not an error).
    conf = conf.replace("worker_rlimit_nofile 65536;", "worker_rlimit_nofile 2048;")
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
