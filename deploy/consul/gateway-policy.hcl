# consulgw gateway: the least a running gateway needs, and nothing else.
#   - services: read, to watch the catalog (/v1/catalog/services) and every service's instances and health
#     (/v1/health/service/<name>) with blocking queries;
#   - nodes: read, because health entries carry node addresses and node-level checks (serfHealth, maintenance),
#     which Consul filters out without node:read;
#   - KV: read under consulgw/ only, to watch policies (services/, defaults, consumers/).
# No write of any kind, no agent, operator, acl, session or event rules. If you run the gateway with another
# --kv-prefix, change the key_prefix below to match.

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}

key_prefix "consulgw/" {
  policy = "read"
}
