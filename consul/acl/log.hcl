# Policy "gradebook-log": what the log service's token may do (Consul 1.8 ACL rules).
#
# Writes: its own registration, and nothing else. service:write on exactly "log" (not a prefix:
# `service_prefix "log"` would also grant "logger", "log-admin", ...) lets it
#   PUT /v1/agent/service/register          (the instance and its HTTP check)
#   PUT /v1/agent/service/deregister/<id>   (only instances named log)
# and read its own agent entry (GET /v1/agent/service/<id>), which the registration keeper
# blocks on to notice when the agent forgot it.
#
# Reads: nothing else. The log service depends on no other service and ships no logs.
service "log" {
  policy = "write"
}
