"""Routing policies for batch-gateway: a package of its own, importable without the gateway."""
