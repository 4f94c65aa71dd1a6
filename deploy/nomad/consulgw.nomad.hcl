# consulgw on Nomad: N stateless replicas behind whatever fronts the Nomad clients (DNS, an L4 load balancer).
#
#   nomad var put nomad/jobs/consulgw consul_token=<gateway token secret> redis_url=redis://redis.service.consul:6379/0
#   nomad job run -var image=registry.example.com/consulgw:0.1.0 deploy/nomad/consulgw.nomad.hcl
#
# Driver: docker. The task runs the same image as Compose and Kubernetes (non-root uid 10001, only the Python
# runtime inside), Nomad enforces cpu/memory, and ports are mapped. raw_exec would run the gateway unisolated as
# the Nomad client's user (usually root), is disabled by default on clients, and would need a Python 3.11 venv
# pre-installed on every node.
#
# Consul token: stored in the Nomad Variable nomad/jobs/consulgw, which this job's workload identity can read
# without extra Nomad ACL policy. The template renders it into secrets/ (tmpfs, not in the image or job spec) as
# CONSUL_HTTP_TOKEN. The token holds deploy/consul/gateway-policy.hcl only. Nomad registers the `consulgw`
# service and its checks with its own Consul credentials, so the gateway token never needs service:write.

variable "image" {
  type        = string
  default     = "consulgw:0.1.0"
  description = "consulgw image built from deploy/Dockerfile"
}

variable "replicas" {
  type    = number
  default = 3
}

job "consulgw" {
  type        = "service"
  datacenters = ["*"]

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "2m"
    progress_deadline = "5m"
    auto_revert       = true
  }

  group "gateway" {
    count = var.replicas

    # At most one gateway per Nomad client, so a node failure takes out one replica.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      # Public port fixed on each client, so clients or an L4 load balancer can find it. Admin port dynamic.
      port "http" {
        static = 8080
        to     = 8080
      }
      port "admin" {
        to = 8081
      }
    }

    service {
      name     = "consulgw"
      provider = "consul"
      port     = "http"
      tags     = ["gateway"]

      # Readiness: passing once the first full Consul view is loaded and while it is fresher than
      # --max-staleness. Consul routes away from an instance whose view is stale, without restarting it.
      check {
        name     = "consulgw ready"
        type     = "http"
        port     = "admin"
        path     = "/-/ready"
        interval = "5s"
        timeout  = "2s"
      }

      # Liveness: only this check restarts the task (3 failures in a row, after a 30s grace at start).
      check {
        name     = "consulgw alive"
        type     = "http"
        port     = "admin"
        path     = "/-/healthy"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "consulgw" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http", "admin"]
        args  = ["run", "--log-format", "json", "--drain-timeout", "30s"]
      }

      env {
        # The Consul agent on this Nomad client. Containers reach it on the client's address, not on loopback.
        CONSUL_HTTP_ADDR       = "http://${attr.unique.network.ip-address}:8500"
        CONSULGW_LISTEN        = "0.0.0.0:8080"
        CONSULGW_ADMIN_LISTEN  = "0.0.0.0:8081"
        CONSULGW_MAX_STALENESS = "60s"
      }

      template {
        destination = "secrets/consulgw.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/consulgw" -}}
        CONSUL_HTTP_TOKEN={{ .consul_token }}
        CONSULGW_REDIS_URL={{ .redis_url }}
        {{- end }}
        EOT
      }

      # Stop sequence: Nomad deregisters the service from Consul, waits shutdown_delay (so other gateways,
      # DNS and load balancers stop sending new connections), then sends SIGTERM. The gateway drains for at most
      # --drain-timeout (30s) and exits 0. kill_timeout (45s) > drain timeout, so SIGKILL never cuts a drain.
      shutdown_delay = "5s"
      kill_signal    = "SIGTERM"
      kill_timeout   = "45s"

      resources {
        cpu    = 500 # MHz
        memory = 256 # MB
      }
    }
  }
}
