"""Text for people: the tables and summaries the commands print (one table helper for all)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.core.progress import JSON_VERSION
from orchestrator.errors import OrchError


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to the widest cell, two spaces apart, no trailing blanks."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def container_table(rows: list[Any], now: float | None = None) -> str:
    """ps-style table of orchestrator.app.results.ContainerRow."""
    data = []
    for r in rows:
        data.append([r.service, str(r.replica), r.node, r.state_text(), r.health or "-", r.image_text(),
                     ", ".join(r.ports) or "-", r.uptime_text(now)])
    return table(["SERVICE", "REPLICA", "NODE", "STATE", "HEALTH", "IMAGE", "PORTS", "UPTIME"], data)


def up_summary(result: Any) -> str:
    """Text for people after `orch up` (orchestrator.app.results.DeployResult)."""
    from orchestrator.cli.clock import whole

    lines = []
    nodes = sorted({r.node for r in result.containers})
    seconds = whole(result.duration_s)
    if result.dry_run:
        lines.append(result.plan.render_text())
        lines.append("Dry run: nothing was changed.")
        return "\n".join(lines)
    if result.plan.is_noop:
        lines.append(f"No changes: {len(result.containers)} container(s) of {result.project} already up to date "
                     f"on {len(nodes)} node(s) of {result.environment} ({seconds:.1f}s).")
    else:
        c = result.plan.counts()
        lines.append(f"{result.project} is up on {result.environment} in {seconds:.1f}s: "
                     f"changed {', '.join(result.changed) or 'nothing'} "
                     f"({c['create']} created, {c['recreate']} recreated, {c['remove']} removed).")
    if result.containers:
        lines.append("")
        lines.append(container_table(result.containers))
    if result.addresses:
        lines.append("")
        lines.append("Published:")
        width = max(len(s) for s in result.addresses)
        for service, addrs in sorted(result.addresses.items()):
            lines.append(f"  {service.ljust(width)}  {'  '.join(addrs)}")
    certs = getattr(result, "certificates", None) or []
    if certs:
        lines.append("")
        lines.append(table(["HOST", "SOURCE", "ISSUER", "NOT AFTER", "NODES", ""], [
            [c["host"], c["source"], c["issuer"] or "-", c["not_after"] or "-", ", ".join(c["nodes"]) or "-",
             ("missing on " + ", ".join(c["missing"]) if c["missing"] else "") + (" (new)" if c["changed"] else "")]
            for c in certs]))
    return "\n".join(lines)


def certs_table(rows: list[Any]) -> str:
    """`orch certs`: orchestrator.core.cert_report.CertRow, one per host name."""
    return table(["HOST", "SOURCE", "ISSUER", "NOT AFTER", "NODES", "STATUS"], [
        [r.host, r.source, r.issuer or "-", r.not_after or "-", r.nodes_text(), r.status] for r in rows])


def renew_summary(report: Any) -> str:
    """`orch certs renew`: old -> new fingerprint per host name."""
    lines = [f"issuer {report.issuer}" + (f", followers {', '.join(report.followers)}" if report.followers else "")]
    for r in report.renewed:
        what = "renewed" if r.ordered else "not due (--force renews anyway)"
        lines.append(f"  {r.host}: {r.old[:16] or '-'} -> {r.new[:16] or '-'}  {what}; served by "
                     f"{', '.join(r.nodes) or 'no node yet'}")
    return "\n".join(lines)


def ingress_table(rows: list[dict]) -> str:
    """For `orch ps`: one line per (service, node) behind the ingress."""
    data = []
    for r in rows:
        up = sum(1 for x in r["servers"] if x["status"] == "UP")
        detail = ", ".join(f"{x['container']} {x['status']}" for x in r["servers"]) or "none"
        front = r["status"] if r["running"] else "HAPROXY NOT RUNNING"
        data.append([r["service"], r["node"], str(r["port"] or "-"), _hosts_text(r.get("route")), front,
                     f"{up}/{len(r['servers'])} up: {detail}"])
    return table(["INGRESS", "NODE", "PORT", "HOSTS", "FRONTEND", "SERVERS"], data)


def _hosts_text(route: Any) -> str:
    """A route's host names with their certificate on the node: `shop.example.com (https, until
    2027-03-01)`, `(https, no certificate yet)`, or `(http)`."""
    if not route or not route.get("hosts"):
        return "-"
    out = []
    for host in route["hosts"]:
        if not route.get("tls"):
            out.append(f"{host} (http)")
            continue
        c = (route.get("certs") or {}).get(host) or {}
        state = f"until {c['not_after'][:10]}" if c.get("fingerprint") else "no certificate yet"
        out.append(f"{host} (https, {state}{'' if c.get('loaded', True) or not c.get('fingerprint') else ', not loaded'})")
    return ", ".join(out)


def release_summary(res: Any) -> str:
    """Text for people after up / promote / rollback."""
    lines = []
    if res.deploy is not None and (res.status == "planned" or res.new_release):
        lines.append(up_summary(replace(res.deploy, duration_s=res.duration_s)))
        lines.append("")
    if res.message:
        lines.append(res.message)
    if res.release is not None and res.new_release:
        rel = res.release
        if rel.approval:
            lines.append(f"Approved by {rel.approval.get('by')} ({rel.approval.get('via')}).")
        width = max((len(s) for s in rel.services), default=0)
        for svc, ref in sorted(rel.services.items()):
            lines.append(f"  {svc.ljust(width)}  {ref}")
    if res.verification is not None:
        v = res.verification
        failed = [r for r in v.get("results", []) if not r.get("ok")]
        if not v.get("total"):
            lines.append("Verification: no checks configured.")
        elif not failed:
            lines.append(f"Verification: all {v['total']} check(s) passed.")
        else:
            lines.append(f"Verification FAILED: {len(failed)} of {v['total']} check(s):")
            for r in failed:
                where = f" @{r['node']}" if r.get("node") else ""
                lines.append(f"  FAIL {r['name']}{where}: {r.get('target', '')}: {r.get('error', '')}")
    removed = sorted({i for images in res.pruned.values() for i in images})
    if removed:
        lines.append(f"Removed {len(removed)} image(s) older than the last releases from the nodes.")
    return "\n".join(lines).strip()




def failure_json(err: OrchError, command: str, project: str | None, environment: str | None,
                 duration: float, plan: Any = None) -> dict:
    out = {"version": JSON_VERSION, "status": "failed", "command": command, "environment": environment,
           "project": project, "changed": [], "containers": [], "addresses": {}, "duration_s": round(duration, 3),
           "error": err.to_json()}
    if plan is not None:
        out["plan"] = plan.to_json()
    return out


# --------------------------------------------------------------------------- orch stats, top, port


def _size(n: int | None, binary: bool) -> str:
    """Bytes as docker stats writes them: memory in KiB/MiB/GiB, I/O in kB/MB/GB."""
    if n is None:
        return "-"
    step, units = (1024.0, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000.0, ("B", "kB", "MB", "GB", "TB"))
    value, unit = float(n), units[0]
    for unit in units:
        if value < step or unit == units[-1]:
            break
        value /= step
    return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"


def _pair(a: int | None, b: int | None, binary: bool) -> str:
    return "-" if a is None and b is None else f"{_size(a, binary)} / {_size(b, binary)}"


def stats_table(rows: list[dict]) -> str:
    """`orch stats`: one row per container (orchestrator.app.look.watch_stats's rows)."""
    data = []
    for r in rows:
        cpu = "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.2f}%"
        mem_pct = "-" if r["memory_percent"] is None else f"{r['memory_percent']:.2f}%"
        data.append([r["service"], str(r["replica"]), r["node"], r["state"] or "-", cpu,
                     _pair(r["memory_used"], r["memory_limit"], True), mem_pct,
                     _pair(r["net_rx"], r["net_tx"], False), _pair(r["block_read"], r["block_write"], False),
                     "-" if r["pids"] is None else str(r["pids"])])
    return table(["SERVICE", "REPLICA", "NODE", "STATE", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                  "BLOCK I/O", "PIDS"], data)


def top_text(rows: list[dict]) -> str:
    """`orch top`: per replica a heading (SERVICE-REPLICA@NODE, container) and its processes."""
    parts = []
    for r in rows:
        head = f"{r['service']}-{r['replica']}@{r['node']} ({r['name']})"
        if not r["titles"]:
            parts.append(f"{head}: {r['state'] or 'not'} running, no processes")
            continue
        parts.append(head + "\n" + table(list(r["titles"]), [list(p) for p in r["processes"]]))
    return "\n\n".join(parts)


def ports_table(rows: list[dict]) -> str:
    """`orch port`: one line per published port of each replica (TARGET/PROTO -> HOST:PORT)."""
    data = []
    for r in rows:
        published = [p for p in r["ports"] if p.get("published")]
        for p in published:
            ip = p.get("host_ip") or "0.0.0.0"
            ip = f"[{ip}]" if ":" in ip else ip  # IPv6, as docker port writes it
            data.append([r["service"], str(r["replica"]), r["node"], f"{p['target']}/{p['protocol']}",
                         f"{ip}:{p['published']}", f"{r['host']}:{p['published']}" if r["host"] else "-"])
        if not published:
            data.append([r["service"], str(r["replica"]), r["node"], "-", "-", "-"])
    return table(["SERVICE", "REPLICA", "NODE", "PORT", "BOUND", "REACH AT"], data)


def inspect_text(rows: list[dict]) -> str:
    """`orch inspect` for people: orch's view of each container, then the engine's document."""
    import json

    parts = []
    for r in rows:
        head = [f"{r['service']}-{r['replica']}@{r['node']} ({r['host']})",
                f"  container    {r['name']} ({r['id'][:12]}), {r['state']}",
                f"  release      {r['release'] or '-'}",
                f"  config hash  {r['config_hash'] or '-'}",
                f"  image        {r['image'] or '-'}",
                "  engine:"]
        parts.append("\n".join(head) + "\n" + json.dumps(r["engine"], indent=2, sort_keys=True, default=str))
    return "\n\n".join(parts)


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return str(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def prune_summary(outcome: Any) -> str:
    """`orch prune`: the plan as a table (node, kind, what, size), then what was done."""
    plan = outcome.plan
    rows = [[n.node, i.kind, i.label or i.name, _bytes(i.size) if i.size else ""] for n in plan.nodes for i in n.items]
    reg = plan.registry
    if reg is not None:
        rows += [[reg.address, "manifests", f"{m.ref} ({', '.join(m.releases)})", ""] for m in reg.manifests]
    rows += [[r.node, "manifests", f"127.0.0.1:47055/{m.ref} ({', '.join(m.releases)})", ""]
             for r in plan.node_registries for m in r.manifests]
    head = (f"{'Would remove' if outcome.dry_run else 'Removing'} for {plan.project} in {plan.env}"
            + (" (volumes included)" if plan.volumes else "") + ":")
    lines = [head, table(["NODE", "KIND", "WHAT", "SIZE"], rows) if rows else "  nothing to remove."]
    lines += [f"note: {n}" for n in plan.notes]
    if reg is not None and reg.skipped:
        lines.append(f"registry {reg.address}: {reg.skipped}")
    if outcome.dry_run:
        return "\n".join(lines)
    done = sum(len(v) for kinds in outcome.removed.values() for v in kinds.values())
    lines.append(f"Removed {done} object(s) on the nodes ({_bytes(sum(outcome.node_bytes.values()))} freed), "
                 f"{len(outcome.deleted)} manifest(s) from the registry"
                 + (f" ({_bytes(outcome.registry_bytes)} freed by its garbage collection)." if outcome.gc_ran
                    else "."))
    if outcome.node_registry_deleted:
        lines.append(f"Deleted {sum(len(v) for v in outcome.node_registry_deleted.values())} manifest(s) from the "
                     "nodes' loopback registries; their garbage collection freed "
                     + ", ".join(f"{_bytes(g.freed)} on {n}" for n, g in sorted(outcome.node_registry_gc.items()))
                     + ".")
    for node, refused in sorted(outcome.refused.items()):
        lines += [f"refused on {node}: {r['kind']} {r['name']}: {r['reason']}" for r in refused]
    lines += [f"registry: {e}" for e in outcome.registry_errors]
    if outcome.deleted and reg is not None and reg.gc == "command":
        lines.append(f"The registry's space comes back once its garbage collection runs: {reg.gc_command}")
    return "\n".join(lines)
