"""Config entries: write, read back, list, check-and-set, delete, and the errors for bad documents."""

from __future__ import annotations

from tests.devagent.support import Api


async def test_crud_and_cas(api: Api) -> None:
    doc = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
    assert (await api.put("/v1/config", doc)).json() is True
    entry = await api.get("/v1/config/service-defaults/web")
    body = entry.json()
    assert (body["Kind"], body["Name"], body["Protocol"]) == ("service-defaults", "web", "http")
    assert body["ModifyIndex"] == entry.index
    stale = str(body["ModifyIndex"] + 100)
    assert (await api.put("/v1/config", doc | {"Protocol": "grpc"}, {"cas": stale})).json() is False
    assert (await api.put("/v1/config", doc | {"Protocol": "grpc"}, {"cas": str(body["ModifyIndex"])})).json() is True
    listed = (await api.get("/v1/config/service-defaults")).json()
    assert [(e["Name"], e["Protocol"]) for e in listed] == [("web", "grpc")]
    assert (await api.call("DELETE", "/v1/config/service-defaults/web", {"cas": stale})).json() is False
    assert (await api.call("DELETE", "/v1/config/service-defaults/web")).json() == {}
    assert (await api.get("/v1/config/service-defaults/web")).status == 404


async def test_bad_documents(api: Api) -> None:
    no_kind = await api.put("/v1/config", {"Name": "web"})
    assert (no_kind.status, no_kind.text) == (
        400,
        "Request decode failed: Payload does not contain a kind/Kind key at the top level",
    )
    bad_kind = await api.put("/v1/config", {"Kind": "nope", "Name": "web"})
    assert (bad_kind.status, bad_kind.text) == (400, "Request decode failed: invalid config entry kind: nope")
