# Agent configuration for local development: `consul agent -dev -config-file consul/dev.hcl`.
# A dev agent is a single-node server that keeps nothing on disk; restart it to lose its state.
client_addr = "127.0.0.1"
bind_addr   = "127.0.0.1"
ui          = true
ports {
  http = 8500
  dns  = 8600
}
# Answer DNS from any server without waiting for a consistent read: fresher than caching, and
# plenty for a single node.
dns_config {
  allow_stale = true
}
