"""One OpenAPI document for every route of the gateway.

- ``document``: a fetched body -> a checked OpenAPI 3.0/3.1 document (JSON only), or an ``OpenApiError``.
- ``rewrite``: one service's document, seen through the route table: paths as clients call them, operations no
  route reaches dropped (and counted), security replaced by the gateway's auth, components and operationIds
  namespaced by the service.
- ``merge``: the rewritten services as one OpenAPI 3.1 document.
- ``catalog``: ``OpenApiCatalog``, the background task that fetches documents from healthy instances (bounded
  concurrency, size and time limits, last good kept) and renders the documents the admin listener serves.
"""
