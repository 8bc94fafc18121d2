"""Pure core: Compose model, environments, placement, specs, plans and release rules (no I/O to nodes)."""
