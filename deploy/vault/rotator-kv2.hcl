# concourse-sts's rotator on a KV v2 engine mounted at concourse/ (vault_kv_mount):
# it reads a secret's metadata for its current version (check-and-set), writes the data
# with that version, reads the data back after a check-and-set conflict, and labels the
# metadata with team and account. Nothing outside concourse/. A login token also keeps
# the default policy, which lets it renew, look up and revoke itself.
path "concourse/data/*" {
  capabilities = ["create", "update", "read"]
}

path "concourse/metadata/*" {
  capabilities = ["create", "update", "read"]
}
