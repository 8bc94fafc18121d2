"""HAProxy's runtime API for certificates (HAProxy >= 2.2; Debian 12 has 2.6), commands
as data: each function returns the command line; `payload` ones carry a PEM text after
`<<`, sent by agent.haproxy.unix_command(..., payload=...).

Replacing a certificate HAProxy serves, without a reload and without dropping a
connection: `set ssl cert FILE <<` + the new PEM (a transaction), then `commit ssl cert
FILE` (new handshakes use it; connections made before keep theirs).
"""

from __future__ import annotations

import re
from typing import List, Tuple

from agent.wire.ingress import INGRESS
from agent.wire.protocol import AgentError

# File names reach HAProxy's command parser: no spaces, quotes, ';' or line breaks.
_FILE_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,255}$")


def _file(path: str) -> str:
    if not _FILE_RE.fullmatch(path):
        raise ValueError("not a certificate file name HAProxy's CLI can take: %r" % path)
    return path


def cmd_set_ssl_cert(path: str) -> str:
    """Opens (or updates) a transaction for FILE; the PEM goes as the payload."""
    return "set ssl cert %s <<" % _file(path)


def cmd_commit_ssl_cert(path: str) -> str:
    return "commit ssl cert %s" % _file(path)


def cmd_abort_ssl_cert(path: str) -> str:
    return "abort ssl cert %s" % _file(path)


def cmd_show_ssl_cert() -> str:
    return "show ssl cert"


def payload_text(pem: str) -> str:
    """A PEM text as a `<<` payload: an empty line ends the payload, so none inside."""
    return "\n".join(ln.rstrip() for ln in pem.splitlines() if ln.strip()) + "\n"


def parse_show_ssl_cert(text: str) -> Tuple[List[str], List[str]]:
    """`show ssl cert` -> (files loaded, files with a transaction open: '*' prefix)."""
    loaded, pending = [], []
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("*"):
            pending.append(s[1:])
        else:
            loaded.append(s)
    return loaded, pending


def check_set(answer: str, path: str) -> None:
    """`set ssl cert` answers 'Transaction created/updated for certificate FILE!'."""
    if "transaction" not in answer.lower() or "error" in answer.lower() or "unable" in answer.lower():
        raise AgentError(INGRESS, "HAProxy refused the new certificate for %s: %s" % (path, answer.strip()[:500]))


def check_commit(answer: str, path: str) -> None:
    """`commit ssl cert` answers '... Success!' (or an error and nothing changed)."""
    if "success" not in answer.lower():
        raise AgentError(INGRESS, "HAProxy did not commit the certificate %s: %s" % (path, answer.strip()[:500]))
