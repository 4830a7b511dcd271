"""The demo page in a real browser: Debian's Chromium, driven by Playwright for Python.

The page runs the official socket.io client served by the node itself. Three gateway
processes share Kafka; the page is opened on node 1 with the list of nodes, a python-socketio
client on node 2 publishes into its room, node 1 is SIGKILLed, and the page must move to
another node, recover its session and show what it missed, marked, with the badge. The
checks read the page (its DOM), as a person would; a screenshot is kept as an artifact
(test-artifacts/demo-page.png). Beside it: the page's token on nodes that check JWTs, the
routes every node serves, and the tokens ``socketio-kafka demo`` signs.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from socketio_kafka.gateway import page
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.demo import ROOM, DemoTokens, page_urls
from socketio_kafka.gateway.errors import InvalidSettings
from socketio_kafka.gateway.settings import Settings

from .support.clients import Recorder
from .support.cluster import REPO, GatewayProcess, gateway_cluster
from .support.sockets import free_run

CHROMIUM = Path("/usr/bin/chromium")
# Chromium on a closed network: no sandbox (root in CI), no GPU, and none of the calls home
# (component updates, sync, QUIC probes) that would stall on it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
SECRET = "a demo secret of at least thirty-two bytes"
WAIT_MS = 30_000  # a reconnect waits up to about 3.5 s for the killed node to go quiet


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.is_file():  # never a silent skip: CI's .ci/install provides it
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/install does)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _open(browser: Browser, url: str, errors: list[str]) -> Page:
    page = await browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", console)
    await page.goto(url)
    return page


def _page_url(node: GatewayProcess, nodes: list[GatewayProcess], **params: str) -> str:
    return f"{node.url}/?{urlencode({'nodes': ','.join(n.url for n in nodes), **params})}"


async def _publish(publisher: Recorder, text: str) -> None:
    payload = {"room": ROOM, "event": "chat", "data": {"from": "python", "text": text}}
    reply = await publisher.ask("publish", payload)
    assert reply["ok"], reply


async def _shown(page: Page) -> list[tuple[str, str | None]]:
    """Each message the page lists: its text, and whether it is marked recovered."""
    items = await page.locator("#messages li").all()
    return [
        (await item.locator(".text").inner_text(), await item.get_attribute("data-recovered"))
        for item in items
    ]


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_page_recovers_what_it_missed_on_another_node(
    cluster: list[GatewayProcess], browser: Browser
) -> None:
    first, second, _ = cluster
    errors: list[str] = []
    page = await _open(browser, _page_url(first, cluster, room=ROOM, name="browser"), errors)
    ARTIFACTS.mkdir(exist_ok=True)
    state, messages = page.locator("#state"), page.locator("#messages li")
    publisher = await Recorder(second.url).connect()
    try:
        await expect(state).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
        await expect(page.locator("#room")).to_have_attribute("data-joined", "true")
        await expect(page.locator("#node")).to_contain_text(f":{first.port}")
        await expect(page.locator("#recovered")).to_be_hidden()
        for i in range(3):
            await _publish(publisher, f"live {i}")
        await expect(messages).to_have_count(3)

        first.stop(signal.SIGKILL)
        await expect(state).not_to_have_attribute("data-state", "connected")
        for i in range(5):  # while the page has no node
            await _publish(publisher, f"missed {i}")

        await expect(state).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
        await expect(messages).to_have_count(8)
        await expect(page.locator("#recovered")).to_have_text("recovered: 5 missed messages")
        await expect(page.locator("#node")).not_to_contain_text(f":{first.port}")
        await _publish(publisher, "after")
        await expect(messages).to_have_count(9)

        assert await publisher.ask("join", {"room": ROOM}) == {"ok": True}
        await page.fill("#text", "hello from the browser")
        await page.press("#text", "Enter")
        chats = await publisher.wait_for("chat", 1)
        assert chats == [{"from": "browser", "text": "hello from the browser"}]
        await expect(messages).to_have_count(10)
        assert await _shown(page) == [
            *((f"live {i}", "false") for i in range(3)),
            *((f"missed {i}", "true") for i in range(5)),
            ("after", "false"),
            ("hello from the browser", "false"),
        ]
        assert not errors, errors
    finally:
        await page.screenshot(path=ARTIFACTS / "demo-page.png", full_page=True)
        await publisher.close()


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_page_passes_its_token_and_shows_a_refusal(
    kafka_url: str, channel: str, browser: Browser, tmp_path: Path
) -> None:
    """On nodes that check JWTs, the page's ``#token=`` goes in its CONNECT auth; without
    one, the page says why the node refused it."""
    secret_file = tmp_path / "jwt"
    secret_file.write_text(SECRET)
    tokens = DemoTokens(SECRET, "HS256")
    args = ["--jwt-secret-file", str(secret_file)]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=args) as (node,):
        errors: list[str] = []
        url = _page_url(node, [node], room=ROOM)
        page = await _open(browser, f"{url}#token={quote(tokens.mint('guest-1'))}", errors)
        refused = await _open(browser, url, [])
        publisher = Recorder(node.url)
        auth = {"recovery": False, **tokens.auth("python")}
        await publisher.client.connect(node.url, transports=["websocket"], auth=auth)
        try:
            await expect(page.locator("#room")).to_have_attribute(
                "data-joined", "true", timeout=WAIT_MS
            )
            await _publish(publisher, "signed")
            await expect(page.locator("#messages li .text")).to_have_text(["signed"])
            assert not errors, errors
            await expect(refused.locator("#state")).to_have_attribute("data-state", "refused")
            await expect(refused.locator("#error")).to_have_text("no token")
        finally:
            await publisher.close()


async def test_every_node_serves_the_page_and_the_client_it_loads() -> None:
    app = create_app(Settings(), kafka_url="kafka://127.0.0.1:1")  # not started: no Kafka
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node:8123") as http:
        page = await http.get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/static/socket.io.min.js">' in page.text
        client = await http.get("/static/socket.io.min.js")
        assert client.status_code == 200, client.text  # .ci/install ran npm ci
        assert client.text.startswith("/*!\n * Socket.IO v4.")
        assert (await http.get("/static/demo.js")).status_code == 200
        node = await http.get("/node")
        assert node.json()["node"].endswith(":8123")
        assert node.headers["access-control-allow-origin"] == "*"


async def test_a_node_without_the_pages_client_says_so_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Installed without ``npm ci`` first, the page loaded no client: a 503 in a browser's
    network tab was the only sign."""
    monkeypatch.setattr(page, "CLIENT_SCRIPT", tmp_path / "socket.io.min.js")
    app = create_app(Settings(), kafka_url="kafka://127.0.0.1:1")
    assert f"the demo page's client is missing: run npm ci --prefix {page.STATIC}" in [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node:8123") as http:
        client = await http.get("/static/socket.io.min.js")
    assert client.status_code == 503
    assert "npm ci" in client.text


def test_demo_tokens_are_signed_with_the_nodes_secret_and_checks(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text(SECRET + "\n")
    settings = Settings(jwt_secret_file=str(secret_file), jwt_audience="chat", jwt_issuer="me")
    tokens = DemoTokens.from_settings(settings)
    assert tokens is not None
    verifier = settings.token_verifier
    assert verifier is not None
    claims = verifier.verify(tokens.mint("guest-1"))
    assert claims.subject == "guest-1"
    assert (claims.raw["rooms"], claims.raw["publish"]) == ([ROOM], [ROOM])
    assert DemoTokens.from_settings(Settings()) is None


def test_demo_tokens_need_a_secret(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InvalidSettings, match="signs its tokens with the nodes' secret"):
        DemoTokens.from_settings(Settings(jwt_public_key=str(pem)))


def test_page_urls_list_every_node_from_their_own() -> None:
    urls = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    tokens = DemoTokens(SECRET, "HS256")
    pages = [urlsplit(page) for page in page_urls(urls, tokens)]
    assert [f"{p.scheme}://{p.netloc}" for p in pages] == urls
    assert [parse_qs(p.query)["nodes"] for p in pages] == [
        [",".join(urls)],
        [",".join(reversed(urls))],
    ]
    subjects = [
        jwt.decode(p.fragment.removeprefix("token="), SECRET, ["HS256"])["sub"] for p in pages
    ]
    assert subjects == ["guest-1", "guest-2"]
    assert all("#" not in page for page in page_urls(urls, None))


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_demo_with_a_secret_signs_its_clients_tokens(kafka_url: str, tmp_path: Path) -> None:
    """``socketio-kafka demo --jwt-secret-file``: its nodes check tokens, and its clients,
    signed by the demo, talk and recover as in the open demo."""
    secret_file = tmp_path / "jwt"
    secret_file.write_text(SECRET)
    command = [
        sys.executable, "-m", "socketio_kafka.gateway", "demo", "--once", "--kafka", kafka_url,
        "--base-port", str(free_run(2)), "--nodes", "2", "--jwt-secret-file", str(secret_file),
    ]  # fmt: skip
    result = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO, capture_output=True, timeout=150
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "bob received it" in out
    assert "recovered=True, missed messages delivered in order: ['are you there?'" in out
