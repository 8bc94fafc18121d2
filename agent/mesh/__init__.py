"""The node side of the service mesh (docs/networking.md): the WireGuard link
(link.py), the firewall (firewall.py), names (records.py, dns.py), the per-node daemon
that keeps names following the replicas (daemon.py) and the agent operations (ops.py)."""
