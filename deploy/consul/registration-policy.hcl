# OPTIONAL: only for a gateway token that also registers the gateway itself in Consul, for example
# `consul services register deploy/consul/consulgw-service.hcl` run with the gateway's token on a systemd host.
# Nomad (deploy/nomad) and Kubernetes do not need it: Nomad registers the `consulgw` service with its own
# Consul credentials, and Kubernetes uses a Service.
#
# Registering (and deregistering) a service through the local agent needs service:write on that service name,
# and only that one name: a gateway token must never be able to register as one of the services it routes to.

service "consulgw" {
  policy = "write"
}
