# concourse-sts's rotator on a KV v1 engine mounted at concourse/ (vault_kv_mount): plain
# writes of each secret. Nothing outside concourse/.
path "concourse/*" {
  capabilities = ["create", "update", "read"]
}
