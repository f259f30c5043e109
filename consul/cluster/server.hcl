# A Consul server of docker-compose.cluster.yml: three of these elect a leader among themselves
# and keep the catalogue replicated (Raft), so any one of them can be lost.
server           = true
bootstrap_expect = 3
data_dir         = "/consul/data"
# Every server tries the others by their compose names until they answer, at start and after a
# restart; a server that lost its data joins again the same way.
retry_join = ["consul-server-1", "consul-server-2", "consul-server-3"]
# The API answers inside the container network only: nothing publishes a server's port.
client_addr = "0.0.0.0"
log_level   = "WARN"
performance {
  # Consul's production timing (the default, 5, suits slow shared VMs): a dead leader is
  # replaced in about a second rather than several.
  raft_multiplier = 1
}
dns_config {
  allow_stale = true
}
# A server that leaves on SIGTERM would shrink the cluster's quorum size; a stopped server is
# rather a failed one, as after a crash, and takes its seat again when it comes back.
leave_on_terminate = false
