# ACLs on, for a dev agent: consul agent -dev -config-file consul/dev.hcl -config-file consul/acl/agent-acl.hcl
# Then scripts/acl-bootstrap.sh --token-dir DIR bootstraps them and writes one token per service.
acl {
  enabled = true
  # Whatever no policy grants is refused: without a token nobody registers, and reads without
  # one see nothing (see dns.hcl for what DNS needs).
  default_policy = "deny"
  # If the servers cannot be reached, keep using what the agent already resolved: services keep
  # their registrations and watches through a server outage.
  down_policy = "extend-cache"
  # Tokens set through the API (`consul acl set-agent-token`) are not written to disk: a dev agent
  # has no data dir, and would write them into its working directory.
  enable_token_persistence = false
}
# Production agents also need their own token for node updates and anti-entropy (a policy with
# `node "<node name>" { policy = "write" }`, given in acl.tokens.agent); without it a dev agent
# logs "Node info update blocked by ACLs", harmlessly: a dev agent is its own server.
