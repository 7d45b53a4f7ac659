# Concourse's web nodes (`concourse web --vault-*`): read-only on concourse/, KV v1 or
# v2 (a v2 read is concourse/data/<path>). Concourse finds the engine's version itself
# through sys/internal/ui/mounts/<path>, which a token may ask of any path it can read.
path "concourse/*" {
  capabilities = ["read"]
}
