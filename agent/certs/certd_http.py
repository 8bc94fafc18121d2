"""The certificate daemon's HTTP answers (pure functions over the request: unit-tested as
data) and the small servers that carry them.

- The issuer's server on listen_address:CERTD_PORT (its mesh address: only peers reach it,
  through WireGuard; agent.mesh.firewall drops it from elsewhere):
    GET /acme/<token>   public: the key authorization of a pending HTTP-01 challenge, or 404
    GET /certs          {host: fingerprint} of the certificates it holds
    GET /certs/<host>   {cert_pem, key_pem}
  /certs needs `Authorization: Bearer <secret>` AND a follower's address, else 403.
- The challenge socket (certd_socket: HAProxy forwards /.well-known/acme-challenge/ to it):
  the issuer answers from memory, a follower relays the issuer's /acme/<token>.
- The control socket (0700 directory, the agent's operations): POST /ensure, POST /pull.
Requests carry no body but the control socket's (bounded); every socket has a timeout.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import socket
import socketserver
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple

from agent.wire.tls import ACME_CHALLENGE_PREFIX, host_name_problem

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, as RFC 8555 makes them
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_CONTROL_BODY = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"


NOT_FOUND = Reply(404, b"not found\n")
FORBIDDEN = Reply(403, b"forbidden\n")


def json_reply(doc: Any) -> Reply:
    return Reply(200, json.dumps(doc, sort_keys=True).encode("utf-8"), "application/json")


def token_of(path: str, prefix: str) -> Optional[str]:
    if not path.startswith(prefix):
        return None
    token = path[len(prefix):]
    return token if TOKEN_RE.fullmatch(token) else None


def authorized(header: Optional[str], client_ip: str, secret: str, followers: Tuple[str, ...]) -> bool:
    """The follower's secret (compared in constant time) from a follower's address."""
    if not header or not header.startswith("Bearer ") or client_ip not in followers:
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode("utf-8"), secret.encode("utf-8"))


def issuer_reply(path: str, auth: Optional[str], client_ip: str, secret: str, followers: Tuple[str, ...],
                 tokens: Callable[[str], Optional[str]], index: Callable[[], Dict[str, str]],
                 pair: Callable[[str], Optional[Tuple[str, str]]]) -> Reply:
    if path.startswith("/acme/"):
        token = token_of(path, "/acme/")
        answer = tokens(token) if token else None
        return Reply(200, answer.encode("ascii")) if answer else NOT_FOUND
    if path != "/certs" and not path.startswith("/certs/"):
        return NOT_FOUND
    if not authorized(auth, client_ip, secret, followers):
        return FORBIDDEN
    if path == "/certs":
        return json_reply(index())
    host = path[len("/certs/"):]
    if host_name_problem(host):  # no traversal: a host name has no '/' nor '..'
        return NOT_FOUND
    got = pair(host)
    return json_reply({"cert_pem": got[0], "key_pem": got[1]}) if got else NOT_FOUND


def challenge_reply(path: str, answer: Callable[[str], Optional[str]]) -> Reply:
    """The challenge socket: `answer(token)` is the issuer's memory or the relay to it."""
    token = token_of(path.split("?", 1)[0], ACME_CHALLENGE_PREFIX)
    got = answer(token) if token else None
    return Reply(200, got.encode("ascii")) if got else NOT_FOUND


# ----------------------------------------------------------------------------- servers


def _handler(get: Optional[Callable[[Any], Reply]] = None, post: Optional[Callable[[str, Any], Reply]] = None) -> Any:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        protocol_version = "HTTP/1.0"

        def _send(self, reply: Reply, head: bool = False) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(reply.body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            self._send(get(self) if get else NOT_FOUND)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(get(self) if get else NOT_FOUND, head=True)

        def do_POST(self) -> None:  # noqa: N802
            try:
                size = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                size = -1
            if post is None or size < 0 or size > MAX_CONTROL_BODY:
                self._send(Reply(400, b"bad request\n"))
                return
            try:
                doc = json.loads(self.rfile.read(size) or b"{}")
            except ValueError:
                self._send(Reply(400, b"bad json\n"))
                return
            self._send(post(self.path, doc))

        def address_string(self) -> str:
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

        def log_message(self, *a: Any) -> None:  # requests carry tokens and auth: not logged
            pass

    return Handler


def client_ip(handler: Any) -> str:
    return handler.client_address[0] if isinstance(handler.client_address, tuple) else ""


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        try:
            os.unlink(self.server_address)
        except OSError:
            pass
        socketserver.UnixStreamServer.server_bind(self)


def unix_server(path: str, mode: int, get: Any = None, post: Any = None) -> UnixHTTPServer:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    server = UnixHTTPServer(path, _handler(get, post))
    os.chmod(path, mode)
    return server


class TCPHTTPServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def tcp_server(address: str, port: int, get: Any) -> ThreadingHTTPServer:
    return TCPHTTPServer((address, port), _handler(get))


def unix_request(path: str, method: str, url: str, body: Optional[Dict[str, Any]] = None,
                 timeout: float = 10.0) -> Tuple[int, bytes]:
    """One HTTP request over a unix socket (the agent asking its daemon)."""
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    conn = Conn("localhost", timeout=timeout)
    try:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        conn.request(method, url, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, resp.read(16 * 1024 * 1024)
    finally:
        conn.close()
