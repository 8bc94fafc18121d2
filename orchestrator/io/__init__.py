"""I/O: SSH and the node pool, the agent client, registries, docker builds, the lock client."""
