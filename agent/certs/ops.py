"""The tls_* operations (agent.wire.tls: CertPut, CERT_OPERATIONS) and, when the
certificate daemon's module is there, its certd_* ones (agent.certs.certd_ops).

A key arrives in tls_cert_put's arguments only: the agent keeps no request log, and
nothing here puts it in a result, an event or an error (tests/unit/test_edge_ops.py).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from agent.certs import store
from agent.wire.protocol import AgentError
from agent.wire.tls import TLS_AUTO, TLS_FILES, CertdResult, CertPut, parse_cert_remove, parse_env_only

try:  # the certificate daemon's operations (agent/certs/certd_ops.py), when built
    from agent.certs.certd_ops import CERTD_OPERATIONS
except ImportError:  # pragma: no cover - until certd lands
    CERTD_OPERATIONS = {}


def op_tls_cert_put(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Install a user's certificate (TLS_FILES) for one host name; it is served at once."""
    put = CertPut.parse(args)
    info = store.install(ctx, put.env, put.host, put.cert_pem, put.key_pem, TLS_FILES)
    return {"cert": info.to_dict()}


def op_tls_cert_remove(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    env, host = parse_cert_remove(args)
    return {"removed": store.remove(ctx, env, host)}


def certd_status(ctx: Any, env: str) -> Any:
    """The certificate daemon's status for env (None: no daemon module, or it failed)."""
    op = CERTD_OPERATIONS.get("certd_status")
    if op is None:
        return None
    try:
        return CertdResult.from_dict(op(ctx, {"env": env})).to_dict()
    except AgentError:
        return None


def node_problems(ctx: Any, env: str, certd: Any) -> List[str]:
    """What this node lacks to serve env's certificates, each "problem: fix" (`nodes check`)."""
    import shutil

    from agent.ingress_files import load_state, paths_for

    out = []
    if shutil.which("openssl") is None:
        out.append("no openssl command (certificates are checked and made with it): apt-get install openssl")
    try:
        auto = any(s.env == env and s.route.tls == TLS_AUTO for s in load_state(paths_for(ctx.data_dir())).values())
    except (OSError, ValueError, AgentError):
        auto = False
    if auto or (certd or {}).get("role"):
        from agent.certs.acme_client import missing

        gone = missing()
        if gone:
            out.append(gone)
    return out


def op_tls_certs(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    env = parse_env_only(args, "tls_certs")
    certs = store.list_certs(ctx.data_dir(), env)
    certd = certd_status(ctx, env)
    return {"certs": [c.to_dict() for c in certs], "certd": certd, "problems": node_problems(ctx, env, certd)}


CERT_OPERATIONS_TABLE: Dict[str, Callable[[Any, Dict[str, Any]], Dict[str, Any]]] = {
    "tls_cert_put": op_tls_cert_put,
    "tls_cert_remove": op_tls_cert_remove,
    "tls_certs": op_tls_certs,
}
CERT_OPERATIONS_TABLE.update(CERTD_OPERATIONS)
