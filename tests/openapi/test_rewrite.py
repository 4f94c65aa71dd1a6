"""Rewriting one service's document through the route table, and merging services: pure logic, table-driven.

Every produced document is also checked with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any

import pytest

from consulgw.errors import OpenApiError
from consulgw.openapi.document import parse_document
from consulgw.openapi.merge import gateway_server, merge
from consulgw.openapi.rewrite import ServiceApi, rewrite_service, security_for
from consulgw.policy.model import ApiKeyAuth, BasicAuth, JwtAuth

from .support import SERVER, doc, op, operations, table, valid

PETS = {
    "/pets": {"get": op("listPets"), "post": op("addPet")},
    "/pets/{id}": {"parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                   "get": op("getPet"), "delete": op("deletePet")},
    "/internal/stats": {"get": op("stats")},
}  # fmt: skip


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def rewrite(service: str, document: dict[str, Any], routes: dict[str, list[str]], auth: object = None) -> ServiceApi:
    return rewrite_service(service, document, table=table(routes), auth=auth, gateway_server=SERVER)


def merged(*apis: ServiceApi) -> dict[str, Any]:
    result = merge(apis, title="gw", version="1", description="d", server=gateway_server("http", "127.0.0.1:8080"))
    return valid(dict(result.document))


@pytest.mark.parametrize(
    ("routes", "servers", "exposed", "unrouted"),
    [
        pytest.param(
            {"pets": ["/pets"]}, None,
            {"GET /pets", "POST /pets", "GET /pets/{id}", "DELETE /pets/{id}"}, {"GET /internal/stats"},
            id="prefix-without-strip",
        ),
        pytest.param(
            {"pets": ["/api/pets strip=/api"]}, None,
            {"GET /api/pets", "POST /api/pets", "GET /api/pets/{id}", "DELETE /api/pets/{id}"}, {"GET /internal/stats"},
            id="strip-adds-the-prefix-back",
        ),
        pytest.param(
            {"pets": ["/api strip=/api"]}, None,
            {"GET /api/pets", "POST /api/pets", "GET /api/pets/{id}", "DELETE /api/pets/{id}",
             "GET /api/internal/stats"}, set(),
            id="strip-whole-prefix-exposes-everything",
        ),
        pytest.param(
            {"pets": ["/pets methods=GET"]}, None,
            {"GET /pets", "GET /pets/{id}"}, {"POST /pets", "DELETE /pets/{id}", "GET /internal/stats"},
            id="methods-filter",
        ),
        pytest.param(
            {"pets": ["/"], "admin": ["/internal"]}, None,
            {"GET /pets", "POST /pets", "GET /pets/{id}", "DELETE /pets/{id}"}, {"GET /internal/stats"},
            id="a-longer-prefix-of-another-service-wins",
        ),
        pytest.param(
            {"pets": ["/pets", "/v2/pets strip=/v2"]}, None,
            {"GET /pets", "POST /pets", "GET /pets/{id}", "DELETE /pets/{id}",
             "GET /v2/pets", "POST /v2/pets", "GET /v2/pets/{id}", "DELETE /v2/pets/{id}"}, {"GET /internal/stats"},
            id="two-routes-two-paths",
        ),
        pytest.param(
            {"pets": ["/shop/v1 strip=/shop"]}, [{"url": "https://10.0.0.7:8443/v1/"}],
            {"GET /shop/v1/pets", "POST /shop/v1/pets", "GET /shop/v1/pets/{id}", "DELETE /shop/v1/pets/{id}",
             "GET /shop/v1/internal/stats"}, set(),
            id="server-base-path",
        ),
        pytest.param(
            {"pets": ["/shop/v1 strip=/shop"]}, [{"url": "/{base}", "variables": {"base": {"default": "v1"}}}],
            {"GET /shop/v1/pets", "POST /shop/v1/pets", "GET /shop/v1/pets/{id}", "DELETE /shop/v1/pets/{id}",
             "GET /shop/v1/internal/stats"}, set(),
            id="server-variables-at-their-defaults",
        ),
        pytest.param({"other": ["/pets"]}, None, set(), {"GET /pets", "POST /pets", "GET /pets/{id}",
                                                         "DELETE /pets/{id}", "GET /internal/stats"},
                     id="no-route-of-its-own"),
    ],
)  # fmt: skip
def test_paths_are_what_the_table_routes(
    routes: dict[str, list[str]], servers: list[dict[str, Any]] | None, exposed: set[str], unrouted: set[str]
) -> None:
    document = doc(PETS, **({"servers": servers} if servers else {}))
    api = rewrite("pets", document, routes)
    assert operations({"paths": dict(api.paths)}) == exposed
    assert set(api.unrouted) == {u.replace("/", "/v1/", 1) if servers else u for u in unrouted}
    assert api.operations == 5
    assert api.exposed == len(exposed)
    merged(api)


def test_host_routes_become_servers() -> None:
    api = rewrite(
        "pets", doc(PETS), {"pets": ["shop.example.com/pets", "*.pets.example.com/pets", "/pets methods=GET"]}
    )
    listed = api.paths["/pets"]["get"]
    assert [s["url"] for s in listed["servers"]] == [
        "{scheme}://{subdomain}.pets.example.com",
        "{scheme}://shop.example.com",
        SERVER["url"],
    ]
    assert [s["url"] for s in api.paths["/pets"]["post"]["servers"]] == [
        "{scheme}://{subdomain}.pets.example.com",
        "{scheme}://shop.example.com",
    ]
    assert sorted(listed["x-consulgw-routes"]) == ["*.pets.example.com/pets", "*/pets", "shop.example.com/pets"]
    merged(api)


def test_names_are_namespaced_and_refs_rewritten() -> None:
    schemas = {
        "Pet": {"type": "object", "properties": {"owner": {"$ref": "#/components/schemas/Owner"}}},
        "Owner": {"type": "object", "properties": {"name": {"type": "string"}}},
        "Animal": {
            "oneOf": [{"$ref": "#/components/schemas/Pet"}, {"$ref": "#/components/schemas/Owner"}],
            "discriminator": {"propertyName": "kind", "mapping": {"pet": "#/components/schemas/Pet", "owner": "Owner"}},
        },
    }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}
    paths = {
        "/pets": {
            "get": op("listPets", tags=["pets"], responses={"200": {"description": "ok", "content": body["content"],
                      "links": {"one": {"operationId": "getPet"}}}}),
            "post": op("listPets", requestBody=body),  # a duplicate operationId in the source
        },
        "/pets/{id}": {"get": op("getPet", parameters=[{"$ref": "#/components/parameters/Id"}])},
    }  # fmt: skip
    components = {
        "schemas": schemas,
        "parameters": {"Id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}},
        "securitySchemes": {"mine": {"type": "http", "scheme": "basic"}},
    }
    document = doc(
        paths, components=components, tags=[{"name": "pets", "description": "Pets!"}], security=[{"mine": []}]
    )
    api = rewrite("pet-store", document, {"pet-store": ["/"]})
    assert sorted(api.components["schemas"]) == ["pet-store.Animal", "pet-store.Owner", "pet-store.Pet"]
    pet = api.components["schemas"]["pet-store.Pet"]
    assert pet["properties"]["owner"]["$ref"] == "#/components/schemas/pet-store.Owner"
    mapping = api.components["schemas"]["pet-store.Animal"]["discriminator"]["mapping"]
    assert mapping == {"pet": "#/components/schemas/pet-store.Pet", "owner": "pet-store.Owner"}
    listing = api.paths["/pets"]["get"]
    assert listing["operationId"] == "pet-store.listPets"
    assert api.paths["/pets"]["post"]["operationId"] == "pet-store.listPets_2"
    assert listing["responses"]["200"]["links"]["one"]["operationId"] == "pet-store.getPet"
    assert listing["tags"] == ["pet-store.pets"]
    assert api.paths["/pets"]["post"]["tags"] == ["pet-store"]
    assert api.paths["/pets/{id}"]["get"]["parameters"] == [{"$ref": "#/components/parameters/pet-store.Id"}]
    assert [t["name"] for t in api.tags] == ["pet-store", "pet-store.pets"]
    assert "security" not in listing  # the service's own scheme is gone: the gateway has no auth here
    assert api.security_schemes == {}
    merged(api)


def test_openapi_30_schemas_become_31() -> None:
    schemas = {
        "Thing": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "nullable": True},
                "size": {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 9,
                         "exclusiveMaximum": False},
                "kind": {"type": "string", "enum": ["a", "b"], "nullable": True},
                "nullable": {"type": "boolean"},
            },
        }
    }  # fmt: skip
    api = rewrite(
        "things", doc({"/things": {"get": op()}}, version="3.0.3", components={"schemas": schemas}), {"things": ["/"]}
    )
    props = api.components["schemas"]["things.Thing"]["properties"]
    assert props["name"] == {"type": ["string", "null"]}
    assert props["size"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": 9}
    assert props["kind"] == {"type": ["string", "null"], "enum": ["a", "b", None]}
    assert props["nullable"] == {"type": "boolean"}  # a property that happens to be called "nullable" stays
    merged(api)


@pytest.mark.parametrize(
    ("auth", "scheme", "scopes"),
    [
        pytest.param(None, None, None, id="public"),
        pytest.param(
            JwtAuth(algorithms=("HS256",), secret="x" * 32, required_scopes=frozenset({"b", "a"})),
            {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}, ["a", "b"], id="jwt",
        ),
        pytest.param(
            JwtAuth(algorithms=("HS256",), secret="x" * 32, header="X-Token"),
            {"type": "apiKey", "in": "header", "name": "X-Token"}, [], id="jwt-in-another-header",
        ),
        pytest.param(ApiKeyAuth(header="X-Key"), {"type": "apiKey", "in": "header", "name": "X-Key"}, [], id="api-key"),
        pytest.param(BasicAuth(), {"type": "http", "scheme": "basic"}, [], id="basic"),
        pytest.param(
            type("IntrospectionAuth", (), {"type": "introspection", "header": "Authorization",
                                            "required_scopes": frozenset({"read"})})(),
            {"type": "http", "scheme": "bearer"}, ["read"], id="introspection",
        ),
    ],
)  # fmt: skip
def test_security_is_the_gateways(auth: object, scheme: dict[str, Any] | None, scopes: list[str] | None) -> None:
    schemes, requirement = security_for(auth, "svc")
    if scheme is None:
        assert (schemes, requirement) == ({}, None)
        return
    [(name, found)] = schemes.items()
    assert {k: v for k, v in found.items() if k != "description"} == scheme
    assert requirement == [{name: scopes}]
    api = rewrite("svc", doc({"/x": {"get": op("x", security=[{"theirs": []}])}}), {"svc": ["/"]}, auth)
    assert api.paths["/x"]["get"]["security"] == requirement
    assert merged(api)["components"]["securitySchemes"] == schemes


def test_merge_keeps_methods_of_two_services_and_reports_clashes() -> None:
    routes = {
        "reads": ["/items methods=GET"],
        "writes": ["/items methods=POST"],
        "a": ["a.example.com/shared"],
        "b": ["b.example.com/shared"],
    }
    items = {"/items": {"get": op("list"), "post": op("add")}}
    shared = {"/shared/{id}": {"get": op("one", parameters=[path_param("id")])}}
    shared_b = {"/shared/{key}": {"get": op("one", parameters=[path_param("key")])}}
    apis = [
        rewrite("reads", doc(items), routes),
        rewrite("writes", doc(items), routes),
        rewrite("a", doc(shared), routes),
        rewrite("b", doc(shared_b), routes),
    ]
    result = merge(apis, title="gw", version="1", description="d", server=SERVER)
    document = valid(dict(result.document))
    assert document["paths"]["/items"]["get"]["operationId"] == "reads.list"
    assert document["paths"]["/items"]["post"]["operationId"] == "writes.add"
    assert list(document["paths"]) == ["/shared/{id}", "/items"]
    assert result.shadowed == {"b": ("GET /shared/{key}",)}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param(b"openapi: 3.1.0\ninfo: {}", "application/yaml", "YAML", id="yaml"),
        pytest.param(b'{"swagger": "2.0"}', None, "Swagger 2.0", id="swagger-2"),
        pytest.param(b"[1]", None, "not a JSON object", id="array"),
        pytest.param(b"{", None, "not valid JSON", id="broken"),
        pytest.param(b'{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": NaN}}', None,
                     "not valid JSON", id="nan"),
        pytest.param(b'{"openapi": "4.0", "info": {"title": "t", "version": "1"}}', None, "not an OpenAPI 3.0 or 3.1",
                     id="version"),
        pytest.param(b'{"openapi": "3.1.0", "info": {"version": "1"}}', None, "info", id="no-title"),
        pytest.param(b'{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"a": {}}}', None,
                     "does not start with '/'", id="relative-path"),
        pytest.param(b'{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"get": 1}}}',
                     None, "paths./a.get", id="operation-not-object"),
        pytest.param(b"\xff{}", None, "not UTF-8", id="not-utf8"),
    ],
)  # fmt: skip
def test_bad_documents_are_refused(body: bytes, content_type: str | None, message: str) -> None:
    with pytest.raises(OpenApiError, match=message.replace(".", r"\.")):
        parse_document(body, content_type=content_type)


def test_a_good_document_parses() -> None:
    assert parse_document(b'\xef\xbb\xbf{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}')
