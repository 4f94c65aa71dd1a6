# Consul service definition for a gateway run by systemd (deploy/systemd) on a host with a Consul agent:
#   CONSUL_HTTP_TOKEN=<token with the gateway and registration policies> \
#     consul services register deploy/consul/consulgw-service.hcl
# or copy it into the agent's config dir. The checks assume the admin listener on 127.0.0.1:8081.
# Readiness (/-/ready) decides whether other components may send traffic here; liveness (/-/healthy) is
# informative only, since systemd restarts the process.

service {
  name = "consulgw"
  id   = "consulgw"
  port = 8080
  tags = ["gateway"]

  checks = [
    {
      id       = "consulgw-ready"
      name     = "consulgw ready"
      http     = "http://127.0.0.1:8081/-/ready"
      interval = "5s"
      timeout  = "2s"
    },
    {
      id       = "consulgw-alive"
      name     = "consulgw alive"
      http     = "http://127.0.0.1:8081/-/healthy"
      interval = "10s"
      timeout  = "2s"
    }
  ]
}
