# A client agent of docker-compose.cluster.yml: one per host. The services of a host share its
# network namespace and talk only to it, at 127.0.0.1:8500, as on a VM; it forwards catalogue
# reads and writes to the servers and runs the health checks of its own services.
server     = false
data_dir   = "/consul/data"
retry_join = ["consul-server-1", "consul-server-2", "consul-server-3"]
# 0.0.0.0 so that the host's published ports (127.0.0.1 on the machine) reach the UI and DNS;
# in a real deployment this is 127.0.0.1 plus the addresses operators use.
client_addr = "0.0.0.0"
log_level   = "WARN"
dns_config {
  allow_stale = true
}
# A stopped host leaves the cluster at once (its services leave the catalogue with it), rather
# than being found failed seconds later.
leave_on_terminate = true
