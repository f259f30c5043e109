# Policy "gradebook-portal": what the portal's token may do (Consul 1.8 ACL rules).
#
# Writes: its own registration only. service:write on exactly "portal" lets it register an
# instance with its HTTP check, deregister it on SIGTERM, and block on its own agent entry.
service "portal" {
  policy = "write"
}

# Reads: the two services it calls and shows on its status page. Each is a blocking query on
# /v1/health/service/<name>?passing; the status page shows what those watches hold, so it needs
# no further read of the catalogue. The log service is also where the portal ships its records.
service "grading" {
  policy = "read"
}

service "log" {
  policy = "read"
}

# node:read on every node: the health endpoint drops instances on nodes the token cannot read.
node_prefix "" {
  policy = "read"
}
