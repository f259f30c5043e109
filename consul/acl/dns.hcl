# Policy "gradebook-dns": what DNS queries and HTTP requests without a token may see, once it
# is attached to the anonymous token (scripts/acl-bootstrap.sh --dns-anonymous does it; an agent
# with its own `default` token uses that instead). Agents answer DNS with that token: with ACLs
# on and default_policy deny, `dig grading.service.consul` finds nothing without this.
#
# Writes: nothing. Reads: the gradebook's three services and the nodes they run on, i.e. what
# DNS answers anyway. Anyone who can reach the agent's HTTP API can read the same through it,
# which is why it is opt-in: a site that needs no DNS for users should not install it.
service "log" {
  policy = "read"
}

service "grading" {
  policy = "read"
}

service "portal" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
