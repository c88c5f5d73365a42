"""The helper: the root daemon, and the only code that changes LIO (rtslib-fb, in `lio`), runs the storage
backends' tools or writes the store. Reached only through its Unix socket (`server`), which allows named
operations per caller; the broker side never imports it (the contracts in pyproject.toml)."""
