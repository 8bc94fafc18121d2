"""HTTPS clients for end-to-end tests: a request to a node address with a chosen SNI and
Host name (curl --resolve's idea), the served certificate's fingerprint, and a load."""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl

from .helpers import Load


def context(cafile: str | None) -> ssl.SSLContext:
    """Verifying context (hostname + chain) against cafile; no verification when None."""
    if cafile is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=cafile)


class PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `address` while SNI, certificate check and Host header say `name`."""

    def __init__(self, name: str, address: str, port: int = 443, cafile: str | None = None, timeout: float = 5):
        super().__init__(name, port, context=context(cafile), timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    def fingerprint(self) -> str:
        if self.sock is None:
            self.connect()
        return hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()


def https_get(name: str, address: str, cafile: str | None, path: str = "/", port: int = 443):
    """(status, headers (names in lower case), body, certificate fingerprint) of one GET."""
    c = PinnedHTTPS(name, address, port, cafile)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        fp = hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest()  # before the close
        r = c.getresponse()
        body = r.read().decode()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, fp
    finally:
        c.close()


def http_get(name: str, address: str, path: str = "/", port: int = 80):
    """(status, headers, body) of a plain-HTTP GET to address with Host: name."""
    c = http.client.HTTPConnection(address, port, timeout=5)
    try:
        c.request("GET", path, headers={"Host": name, "Connection": "close"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def fingerprint(name: str, address: str, cafile: str | None, port: int = 443) -> str:
    c = PinnedHTTPS(name, address, port, cafile)
    try:
        return c.fingerprint()
    finally:
        c.close()


class HTTPSLoad(Load):
    """Load (tests/e2e/helpers.py) over HTTPS: every request a new TLS connection to the
    node address with SNI and Host `name`, its certificate verified against cafile."""

    def __init__(self, name: str, address: str, rate: float, cafile: str, port: int = 443):
        super().__init__(address, port, rate)
        self.name, self.cafile = name, cafile
        self.fingerprints: set[str] = set()

    def _one(self, sent):
        import time

        body, error = None, ""
        began = time.monotonic()
        try:
            status, _, data, fp = https_get(self.name, self.host, self.cafile, port=self.port)
            with self._lock:
                self.fingerprints.add(fp)
            if status == 200:
                body = data
            else:
                error = "HTTP %d %s" % (status, data[:80])
        except Exception as exc:  # any failure counts
            error = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            self.results.append((sent, time.monotonic(), body, error, began))
