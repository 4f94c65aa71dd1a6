"""Per-service policy read from Consul KV: typed model, schema, parser and the live policy book."""
