# Policy "gradebook-grading": what the grading service's token may do (Consul 1.8 ACL rules).
#
# Writes: its own registration only. service:write on exactly "grading" lets it register an
# instance with its HTTP check, deregister it on SIGTERM, and block on its own agent entry.
# It cannot register, deregister or rewrite an instance named log or portal (403).
service "grading" {
  policy = "write"
}

# Reads: where the log service is, to ship its own log records there. The watch is a blocking
# query on /v1/health/service/log?passing, whose answer Consul filters by service:read on the
# service and node:read on each node an instance runs on; without either the answer is an empty
# list (not an error), so the records would wait forever.
service "log" {
  policy = "read"
}

# node:read on every node: instances run on any host. It shows node names and addresses, which
# the service addresses reveal anyway; it grants no write.
node_prefix "" {
  policy = "read"
}
