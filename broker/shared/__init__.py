"""What the helper, the broker and the CLI share: the configuration, identifiers, the error codes, the helper's
protocol and its client (the only way the broker reaches the helper), who may boot what, connection caps and
durable file writes. It imports nothing else of broker's (the contracts in pyproject.toml)."""
