"""The broker: the unprivileged HTTPS server that iPXE talks to (TLS, PAM, menus, boot scripts). It asks the helper
for disks through `broker.shared.helper_client` only, and imports no helper code, no rtslib and no subprocess
(the contracts in pyproject.toml)."""
