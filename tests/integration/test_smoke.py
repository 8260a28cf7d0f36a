from tests.conftest import login


async def test_login_lands_on_role_home(client):
    await login(client, "agent1")
    response = await client.get("/")
    assert response.status == 200
    assert "坐席工作台" in await response.text()


async def test_health(client):
    assert (await client.get("/healthz")).status == 200
    body = await (await client.get("/readyz")).json()
    assert body["checks"]["database"] == "ok"
