"""The contract between controller and agent: what travels on the wire, and the rules
both sides apply to it. The only part of agent/ the controller imports.

Stdlib only, no I/O (no files, processes, sockets or environment), Python 3.9
compatible: it runs on the nodes too.

  protocol   framing (request, event, result, error lines), versions and bounds of the
             wire, error kinds, AgentError, argument validators, image/registry names
  labels     the io.orch.* labels and the names of containers, networks, volumes, servers
  spec       ServiceSpec and ContainerSpec (what `apply` converges to), config_hash
  messages   the deploy path's typed requests and results (state, rollout, restore,
             retire, discard, remove), each with to_dict() and from_dict()
  stops      await_stops: waiting for the stops a start-first rollout left in the background
  ingress    the ingress model: Health, ServiceIngress, the ingress_* requests, IngressSettings
  ledger     the release record's statuses
  redact     the one secret rule (masking values, names, passwords in URLs)
"""
