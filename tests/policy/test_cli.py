"""``consulgw policy ...`` and ``consulgw consumer add`` end to end: subprocess against the in-process dev agent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from consulgw.devagent import DevAgent
from consulgw.policy.consumers import api_key_digest, verify_password
from tests.policy import keys
from tests.policy.cli import kv_get, kv_put, run_cli

USERS = {
    "timeouts": {"connect": "1s", "read": "15s"},
    "auth": {"type": "jwt", "algorithms": ["HS256"], "secret": keys.HS256_SECRET, "issuer": "https://issuer.example"},
    "rate_limit": {"requests": 100, "per": "1m", "key": "consumer"},
}


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    path.write_text(json.dumps(USERS, indent=2))
    return path


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text


# ---------------------------------------------------------------------------------------------------------- validate


async def test_validate_ok(users_file: Path) -> None:
    result = await run_cli("policy", "validate", str(users_file))
    assert result.code == 0, result.err
    assert result.out == (
        "ok: timeouts connect 1s read 15s, retries 1 on connect_failure, auth jwt (HS256 via secret), "
        "rate limit 100 per 1m0s by consumer (local)\n"
    )
    assert keys.HS256_SECRET not in result.out


async def test_validate_stdin() -> None:
    result = await run_cli("policy", "validate", "-", stdin=b'{"lb": "least_conn"}')
    assert result.code == 0, result.err
    assert "lb least_conn" in result.out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            b'{"rate_limit": {"requests": 10, "per": "10 s"}}',
            ": rate_limit.per: '10 s' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            b'{"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": "tooshort"}}',
            ": auth.secret: '***' is too short for HS256",
            id="secret-hidden",
        ),
        pytest.param(b"{", ": not valid JSON", id="syntax"),
    ],
)
async def test_validate_refusal(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = await run_cli("policy", "validate", str(path))
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith(f"consulgw policy validate: error: {path}{expected}")
    assert result.err.count("\n") == 1
    assert "tooshort" not in result.err
    no_traceback(result.err)


async def test_validate_missing_file(tmp_path: Path) -> None:
    result = await run_cli("policy", "validate", str(tmp_path / "nope.json"))
    assert result.code == 1
    assert "cannot read" in result.err
    no_traceback(result.err)


# -------------------------------------------------------------------------------------------------------- put / get


async def test_put_then_get(dev_agent: DevAgent, users_file: Path) -> None:
    put = await run_cli("policy", "put", "users", str(users_file), "--consul", dev_agent.url)
    assert put.code == 0, put.err
    assert put.out.startswith("ok: wrote consulgw/services/users: timeouts connect 1s read 15s")
    assert json.loads(await kv_get(dev_agent.url, "consulgw/services/users") or b"") == USERS

    get = await run_cli("policy", "get", "users", "--consul", dev_agent.url)
    assert get.code == 0, get.err
    assert json.loads(get.out) == USERS
    assert get.err == ""

    again = await run_cli("policy", "put", "users", str(users_file), "--consul", dev_agent.url)
    assert again.code == 0
    assert again.out.startswith("ok: consulgw/services/users unchanged")

    edited = users_file.with_name("users2.json")
    edited.write_text(json.dumps({**USERS, "lb": "least_conn"}))
    update = await run_cli("policy", "put", "users", str(edited), "--consul", dev_agent.url)
    assert update.code == 0, update.err
    assert json.loads(await kv_get(dev_agent.url, "consulgw/services/users") or b"")["lb"] == "least_conn"


async def test_get_absent(dev_agent: DevAgent) -> None:
    result = await run_cli("policy", "get", "nobody", "--consul", dev_agent.url)
    assert result.code == 1
    assert result.err == (
        "consulgw policy get: error: no policy stored at consulgw/services/nobody "
        "(the service runs with consulgw/defaults)\n"
    )


async def test_get_warns_about_a_stored_document_the_gateway_rejects(dev_agent: DevAgent) -> None:
    await kv_put(dev_agent.url, "consulgw/services/users", b'{"lb": "fastest"}')
    result = await run_cli("policy", "get", "users", "--consul", dev_agent.url)
    assert result.code == 0
    assert json.loads(result.out) == {"lb": "fastest"}
    assert "warning: the gateway rejects this document: consulgw/services/users: lb: 'fastest'" in result.err


async def test_put_invalid_writes_nothing(dev_agent: DevAgent, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"cors": {"origins": ["*"], "credentials": true}}')
    result = await run_cli("policy", "put", "users", str(path), "--consul", dev_agent.url)
    assert result.code == 1
    assert "consulgw/services/users: cors.credentials: true cannot be combined" in result.err
    assert await kv_get(dev_agent.url, "consulgw/services/users") is None


async def test_put_validates_against_stored_defaults(dev_agent: DevAgent, tmp_path: Path) -> None:
    await kv_put(dev_agent.url, "edge/defaults", b'{"cors": {"origins": ["https://app.example.com"]}}')
    path = tmp_path / "partial.json"
    path.write_text('{"cors": {"credentials": true}}')
    alone = await run_cli("policy", "validate", str(path))
    assert alone.code == 1
    assert "cors: missing required key 'origins'" in alone.err
    merged = await run_cli("policy", "validate", str(path), "--consul", dev_agent.url, "--kv-prefix", "edge")
    assert merged.code == 0, merged.err
    assert merged.out.startswith("ok: ")
    put = await run_cli("policy", "put", "users", str(path), "--consul", dev_agent.url, "--kv-prefix", "edge")
    assert put.code == 0, put.err
    assert put.out.startswith("ok: wrote edge/services/users: ")
    assert "cors 1 origin" in put.out
    await kv_put(dev_agent.url, "edge/defaults", b'{"cors": {"origins": ["*"]}}')
    refused = await run_cli("policy", "put", "orders", str(path), "--consul", dev_agent.url, "--kv-prefix", "edge")
    assert refused.code == 1
    assert "edge/services/orders: cors.credentials: true cannot be combined with origins ['*']" in refused.err


RacingProxy = Callable[[str], Awaitable[str]]


@pytest.fixture
async def racing_proxy(
    dev_agent: DevAgent, aiohttp_server: Callable[[web.Application], Awaitable[object]]
) -> AsyncIterator[RacingProxy]:
    """A pass-through proxy to the agent that, when a check-and-set PUT for ``key`` arrives, first lets "someone
    else" write that key -- the race a CAS must catch."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(key: str) -> str:
        session = aiohttp.ClientSession()
        sessions.append(session)

        async def forward(request: web.Request) -> web.Response:
            if request.method == "PUT" and request.path == f"/v1/kv/{key}" and "cas" in request.query:
                await kv_put(dev_agent.url, key, b'{"lb": "ip_hash"}')
            async with session.request(
                request.method,
                dev_agent.url + request.path_qs,
                data=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")},
            ) as upstream:
                body = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k.lower().startswith("x-consul")}
                return web.Response(
                    status=upstream.status, body=body, headers=headers, content_type=upstream.content_type
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]

    yield start
    for session in sessions:
        await session.close()


@pytest.mark.parametrize("existing", [pytest.param(False, id="new-key"), pytest.param(True, id="existing-key")])
async def test_put_refuses_to_overwrite_a_concurrent_change(
    dev_agent: DevAgent, racing_proxy: RacingProxy, users_file: Path, existing: bool
) -> None:
    key = "consulgw/services/users"
    if existing:
        await kv_put(dev_agent.url, key, b'{"lb": "round_robin"}')
    proxy = await racing_proxy(key)
    result = await run_cli("policy", "put", "users", str(users_file), "--consul", proxy)
    assert result.code == 1
    assert "consulgw/services/users was changed by someone else while this command ran" in result.err
    assert "nothing was written" in result.err
    assert await kv_get(dev_agent.url, key) == b'{"lb": "ip_hash"}'  # the other writer's value survives
    no_traceback(result.err)


async def test_unreachable_consul(free_port: Callable[[], int], users_file: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    for args in (("policy", "get", "users"), ("policy", "put", "users", str(users_file)), ("consumer", "add", "a")):
        result = await run_cli(*args, "--consul", address, "--token", "tok-secret-123")
        assert result.code == 1
        assert f"cannot reach Consul at {address} (connection failed)" in result.err
        assert "tok-secret-123" not in result.err
        no_traceback(result.err)


# ------------------------------------------------------------------------------------------------------- consumers


async def test_consumer_add_stores_digests_only(dev_agent: DevAgent) -> None:
    key_one, key_two, password = "ak_live_0123456789abcdefghij", "ak_live_klmnopqrstuvwxyz9876", "pa55-w0rd!"
    first = await run_cli(
        "consumer", "add", "alice", "--api-key", key_one, "--api-key", key_two, "--password", password,
        "--consul", dev_agent.url,
    )  # fmt: skip
    assert first.code == 0, first.err
    stored_raw = await kv_get(dev_agent.url, "consulgw/consumers/alice")
    assert stored_raw is not None
    for secret in (key_one, key_two, password):
        assert secret.encode() not in stored_raw
        assert secret not in first.out + first.err
    stored = json.loads(stored_raw)
    assert stored["api_key_sha256"] == [api_key_digest(key_one), api_key_digest(key_two)]
    assert verify_password(stored["password_hash"], password)
    assert first.out.startswith("ok: created consulgw/consumers/alice: api keys: sha256:")
    assert f"sha256:{api_key_digest(key_one)[:8]}… (new)" in first.out
    assert api_key_digest(key_one) not in first.out  # only a prefix of the digest

    # scopes added by an operator are kept; a new key is merged in; the password stays
    await kv_put(dev_agent.url, "consulgw/consumers/alice", json.dumps({**stored, "scopes": ["users:read"]}).encode())
    key_three = "ak_live_third_key_0000000000"
    second = await run_cli("consumer", "add", "alice", "--api-key", key_three, "--consul", dev_agent.url)
    assert second.code == 0, second.err
    merged = json.loads(await kv_get(dev_agent.url, "consulgw/consumers/alice") or b"")
    assert merged["api_key_sha256"] == [api_key_digest(k) for k in (key_one, key_two, key_three)]
    assert merged["scopes"] == ["users:read"]
    assert merged["password_hash"] == stored["password_hash"]
    assert second.out.startswith("ok: updated consulgw/consumers/alice: ")
    assert "password unchanged" in second.out


async def test_consumer_password_from_stdin(dev_agent: DevAgent) -> None:
    result = await run_cli("consumer", "add", "bob", "--password", "-", "--consul", dev_agent.url, stdin=b"s3cret\n")
    assert result.code == 0, result.err
    stored = json.loads(await kv_get(dev_agent.url, "consulgw/consumers/bob") or b"")
    assert verify_password(stored["password_hash"], "s3cret")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("bad/name",), "'bad/name' is not a consumer name", id="name"),
        pytest.param(("carol", "--api-key", ""), "--api-key: an API key must not be empty", id="empty-key"),
    ],
)
async def test_consumer_add_refusals(dev_agent: DevAgent, args: tuple[str, ...], expected: str) -> None:
    result = await run_cli("consumer", "add", *args, "--consul", dev_agent.url)
    assert result.code == 1
    assert expected in result.err
    no_traceback(result.err)


async def test_consumer_add_keeps_hands_off_a_broken_document(dev_agent: DevAgent) -> None:
    await kv_put(dev_agent.url, "consulgw/consumers/dave", b'{"api_key_sha256": ["plain-text-key"]}')
    result = await run_cli("consumer", "add", "dave", "--api-key", "x" * 32, "--consul", dev_agent.url)
    assert result.code == 1
    assert "the stored document is rejected" in result.err
    assert "plain-text-key" not in result.err
    assert await kv_get(dev_agent.url, "consulgw/consumers/dave") == b'{"api_key_sha256": ["plain-text-key"]}'


async def test_consumer_add_refuses_to_overwrite_a_concurrent_change(
    dev_agent: DevAgent, racing_proxy: RacingProxy
) -> None:
    proxy = await racing_proxy("consulgw/consumers/erin")
    result = await run_cli("consumer", "add", "erin", "--api-key", "y" * 32, "--consul", proxy)
    assert result.code == 1
    assert "changed by someone else" in result.err


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(403, "Permission denied", "refused the request: permission denied (ACL)", id="acl"),
        pytest.param(
            500, "rpc error: No cluster leader", "answered with an error: 500 rpc error: No cluster leader", id="500"
        ),
    ],
)
async def test_consul_errors_are_one_line(
    aiohttp_server: Callable[[web.Application], Awaitable[object]],
    users_file: Path,
    status: int,
    body: str,
    expected: str,
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = await aiohttp_server(app)
    address = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    for args in (("policy", "get", "users"), ("policy", "put", "users", str(users_file)), ("consumer", "add", "a")):
        result = await run_cli(*args, "--consul", address, "--token", "tok-secret-123")
        assert result.code == 1, result
        assert result.err.count("\n") == 1, result.err
        assert f"Consul at {address} {expected}" in result.err
        assert "tok-secret-123" not in result.err
        no_traceback(result.err)
