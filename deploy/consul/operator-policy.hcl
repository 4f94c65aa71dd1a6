# consulgw operators: what `consulgw policy get/put`, `consulgw consumer add` and `consulgw routes` need.
#   - KV: write under consulgw/ only (policies, defaults, consumers; `policy put` writes with check-and-set);
#   - services and nodes: read, for `consulgw routes` (the route table built straight from the catalog).
# Nothing outside the consulgw/ prefix, no service or node write.

key_prefix "consulgw/" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
