"""A small client for the Docker Registry HTTP API v2 (Docker Distribution, Harbor, GHCR...).

Used by orchestrator.io.images to check a registry before anything is touched, to read
back the digest of what was pushed and to pin `image:` references to digests. It
speaks HTTPS with the environment's CA file, answers both challenge styles (Basic, as
the lab's htpasswd registry asks; Bearer tokens, as Docker Hub and most hosted
registries ask) and never puts a password in an exception, a repr or a log line.

Credentials travel over HTTPS only: Basic to the registry itself only when it is
reached over https, and to a Bearer challenge's token service (its `realm`) only when
that URL is https, whichever host it names (Docker Hub's is auth.docker.io). A realm
on http gets an anonymous token request; the error then says why. Redirects to another
host or scheme lose the Authorization header (requests strips it).

    client = RegistryClient("10.250.0.1:5000", ca_file=ca, credentials=creds)
    client.ping()                                   # PingResult(status="ok", ...)
    client.manifest_digest("hello/web", "v1")       # "sha256:..." or None
    parse_reference("busybox").repository           # "library/busybox" (docker.io)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BAD_INPUT, OrchError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
SINGLE_MANIFEST_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------- errors


class RegistryError(OrchError):
    """The registry could not do what was asked (exit 1); nothing on any node was touched."""

    def __init__(self, message: str, *, registry: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        if registry:
            self.details.setdefault("registry", registry)


class RegistryUnavailable(RegistryError):
    """Nothing answers at the address, or it does not speak the registry API."""


class RegistryAuthError(RegistryError):
    """The registry refuses the credentials (or wants some and we have none)."""


class RegistryTLSError(RegistryError):
    """The registry's certificate is not trusted with the configured CA file."""


class ImageNotFound(OrchError):
    """An `image:` reference names a repository or tag the registry does not have (exit 2)."""

    exit_code = EXIT_BAD_INPUT


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference, normalised the way Docker does it.

    registry "docker.io" for Docker Hub; repository with "library/" for official images.
    `name` is what the user wrote without tag or digest (kept for familiar output).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    name: str = ""

    @property
    def is_docker_hub(self) -> bool:
        return self.registry == DOCKER_HUB

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (default latest)."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """`name@sha256:...`: the user's spelling of the repository, pinned, without the tag."""
        return f"{self.name or self.full_repository}@{digest}"

    @property
    def full_repository(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name or self.full_repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


_REF_RE = re.compile(
    r"^(?P<name>[a-zA-Z0-9][a-zA-Z0-9._:/-]*?)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


def parse_reference(ref: str) -> ImageRef:
    """'busybox' -> docker.io/library/busybox:latest; 'reg:5000/a/b:1' -> reg:5000, a/b, 1.

    Raises ValueError for something that is not an image reference.
    """
    m = _REF_RE.match(ref.strip())
    if m is None:
        raise ValueError(f"not an image reference: {ref!r}")
    name, tag, digest = m.group("name"), m.group("tag"), m.group("digest")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT_RE.match(c) for c in path.split("/")):
        raise ValueError(f"not an image reference: {ref!r} (repository names are lowercase)")
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest, name=name)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PingResult:
    address: str
    status: str  # ok | unauthorized | down | tls | error
    detail: str = ""
    authenticated: bool = False  # credentials were sent and accepted
    auth_scheme: str = ""  # "basic", "bearer" or "" (none asked)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    body: bytes = field(repr=False)

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def is_index(self) -> bool:
        return self.media_type in (MANIFEST_TYPES[1], MANIFEST_TYPES[3]) or "manifests" in self.json()


@dataclass(frozen=True)
class Layer:
    digest: str  # compressed blob digest, as the manifest lists it
    size: int  # compressed bytes: what travels on push and pull
    diff_id: str  # uncompressed digest, as the image config lists it


# --------------------------------------------------------------------------- client


def api_host(address: str) -> str:
    return DOCKER_HUB_API if address in (DOCKER_HUB, "index.docker.io") else address


class RegistryClient:
    """One registry (host[:port]), HTTPS, optional credentials; thread-safe for reads."""

    def __init__(
        self,
        address: str,
        *,
        ca_file: Path | str | None = None,
        credentials: Any = None,  # environments.RegistryCredentials (username, password) or None
        timeout: float = 10.0,
        scheme: str = "https",
        session: Any = None,
    ):
        import requests

        self.address = address
        self.ca_file = Path(ca_file) if ca_file else None
        self._credentials = credentials
        self.timeout = timeout
        self.base = f"{scheme}://{api_host(address)}"
        self.session = session or requests.Session()
        self._verify: Any = str(self.ca_file) if self.ca_file else True
        self._tokens: dict[str, str] = {}
        self._basic = False  # the registry asked for Basic: send it up front from now on
        self._withheld: str | None = None  # a URL credentials were not sent to (not HTTPS), for errors
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        user = getattr(self._credentials, "username", None)
        return f"RegistryClient({self.address!r}, user={user!r})"

    # ---------------------------------------------------------------- HTTP

    def _auth_tuple(self) -> tuple[str, str] | None:
        c = self._credentials
        return (c.username, c.password) if c is not None else None

    def _request(self, method: str, path: str, *, scope: str = "", headers: dict | None = None,
                 stream: bool = False, data: bytes | None = None) -> Any:
        """One request, answering a 401 challenge once (Basic or Bearer); path may be a whole URL
        (an upload's Location)."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        hdrs = dict(headers or {})
        resp = self._send(method, url, hdrs, scope, stream, data)
        if resp.status_code == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "basic" and self._credentials is not None and not self._basic:
                if _is_https(url):
                    self._basic = True
                    resp = self._send(method, url, hdrs, scope, stream, data)
                else:
                    self._withheld = self.base
            elif scheme == "bearer":
                token = self._fetch_token(challenge, scope)
                if token is not None:
                    resp = self._send(method, url, hdrs, scope, stream, data)
        return resp

    def _send(self, method: str, url: str, headers: dict, scope: str, stream: bool, data: bytes | None = None
              ) -> Any:
        import requests

        hdrs = dict(headers)
        auth = None
        token = self._tokens.get(scope)
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        elif self._basic:
            auth = self._auth_tuple()
        try:
            return self.session.request(method, url, headers=hdrs, auth=auth, verify=self._verify,
                                        timeout=self.timeout, stream=stream, allow_redirects=True,
                                        **({"data": data} if data is not None else {}))
        except requests.exceptions.SSLError as err:
            raise self._tls_error(err) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            raise self._down_error(err) from None
        except OSError as err:  # e.g. a CA file that cannot be read
            raise RegistryUnavailable(
                f"registry {self.address}: {err}", registry=self.address,
                fix="check registry.ca_file in the environment file.",
            ) from None

    def _fetch_token(self, challenge: str, scope: str) -> str | None:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return None
        if scope:
            params["scope"] = scope
        import requests

        auth = self._auth_tuple()
        if auth is not None and not _is_https(realm):
            auth, self._withheld = None, realm  # Basic credentials never go over plain HTTP
        try:
            resp = self.session.get(realm, params=params, auth=auth, verify=self._verify,
                                    timeout=self.timeout)
        except requests.exceptions.SSLError as err:
            raise self._tls_error(err) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            raise self._down_error(err, what=f"its token service {realm}") from None
        if resp.status_code in (401, 403):
            return None
        if resp.status_code != 200:
            return None
        try:
            body = resp.json()
        except ValueError:
            return None
        token = body.get("token") or body.get("access_token")
        if token:
            with self._lock:
                self._tokens[scope] = token
        return token

    def _tls_error(self, err: Exception) -> RegistryTLSError:
        how = f"the CA file {self.ca_file}" if self.ca_file else "the system's CA certificates"
        reason = f"its TLS certificate is not trusted with {how} ({_short(err)})"
        return RegistryTLSError(
            f"registry {self.address}: {reason}.",
            registry=self.address, details={"reason": reason},
            fix="point registry.ca_file in the environment file at the CA that signed the registry's "
            "certificate (for the lab: /var/lib/orch-lab/ca.crt).",
        )

    def _down_error(self, err: Exception, what: str = "") -> RegistryUnavailable:
        text = _short(err)
        if "refused" in text.lower():
            why = "connection refused (is the registry running and listening on that port?)"
        elif "timed out" in text.lower() or "timeout" in text.lower():
            why = f"no answer within {self.timeout:g}s (registry down, or a firewall drops the traffic)"
        else:
            why = text
        where = f"registry {self.address}" + (f" ({what})" if what else "")
        return RegistryUnavailable(
            f"{where} is not reachable: {why}. Nothing was pushed and no node was touched.",
            registry=self.address, details={"reason": why},
            fix="start the registry (for the lab: `orch lab up`) or fix registry.address in the environment "
            "file, then run the command again.",
        )

    # ---------------------------------------------------------------- API

    def ping(self) -> PingResult:
        """GET /v2/: is it up, is it a registry, are our credentials (if any) accepted?

        Never raises for the expected failures; they come back as status down / tls /
        unauthorized / error with a detail line.
        """
        try:
            resp = self._request("GET", "/v2/", scope="")
        except RegistryTLSError as err:
            return PingResult(self.address, "tls", err.details.get("reason", err.message))
        except RegistryUnavailable as err:
            return PingResult(self.address, "down", err.details.get("reason", err.message))
        scheme = ""
        challenge = resp.headers.get("WWW-Authenticate", "")
        if challenge:
            scheme = challenge.split(" ", 1)[0].lower()
        if self._basic:
            scheme = "basic"
        elif self._tokens:
            scheme = "bearer"
        api = resp.headers.get("Docker-Distribution-API-Version", "")
        if resp.status_code == 200:
            sent = self._credentials is not None and scheme in ("basic", "bearer")
            return PingResult(self.address, "ok", "", authenticated=sent, auth_scheme=scheme)
        if resp.status_code == 401:
            if self._credentials is None:
                return PingResult(self.address, "unauthorized", "the registry wants credentials and none are "
                                  "configured", auth_scheme=scheme)
            user = self._credentials.username
            if self._withheld:
                return PingResult(self.address, "unauthorized", f"the credentials of user '{user}' were not sent to "
                                  f"{self._withheld}: not HTTPS", auth_scheme=scheme)
            return PingResult(self.address, "unauthorized", f"the registry refuses the credentials of user "
                              f"'{user}'", auth_scheme=scheme)
        if not api and resp.status_code == 404:
            return PingResult(self.address, "error", "something answers there, but it is not a Docker registry "
                              "(no /v2/ API)")
        return PingResult(self.address, "error", f"the registry answered HTTP {resp.status_code} to GET /v2/")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest of a tag (or digest) in a repository; None when it is not there."""
        path = f"/v2/{repository}/manifests/{reference}"
        resp = self._request("HEAD", path, scope=_pull_scope(repository),
                             headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code == 404:
            return None
        self._raise_for(resp, f"HEAD {path}")
        digest = resp.headers.get("Docker-Content-Digest")
        if digest and DIGEST_RE.match(digest):
            return digest
        return self.manifest(repository, reference).digest  # some registries omit the header on HEAD

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE /v2/<name>/manifests/<digest> (the registry must allow deletes: Distribution's
        `storage: delete: enabled: true`). True when deleted, False when it was not there."""
        path = f"/v2/{repository}/manifests/{digest}"
        resp = self._request("DELETE", path, scope=f"repository:{repository}:delete")
        if resp.status_code == 404:
            return False
        if resp.status_code == 405:
            raise RegistryError(f"registry {self.address} does not allow deleting manifests (HTTP 405)",
                                registry=self.address,
                                fix="enable deletes in the registry's configuration (`storage: delete: "
                                    "enabled: true` for a Distribution registry)")
        self._raise_for(resp, f"DELETE {path}")
        return True

    def manifest(self, repository: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES) -> Manifest:
        path = f"/v2/{repository}/manifests/{reference}"
        resp = self._request("GET", path, scope=_pull_scope(repository), headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            raise ImageNotFound(
                f"{self.address}/{repository}:{reference} does not exist in the registry.",
                fix="check the image name and tag, or push it first.",
            )
        self._raise_for(resp, f"GET {path}")
        body = resp.content
        digest = resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(media_type=media, digest=digest, body=body)

    def blob(self, repository: str, digest: str) -> bytes:
        path = f"/v2/{repository}/blobs/{digest}"
        resp = self._request("GET", path, scope=_pull_scope(repository))
        self._raise_for(resp, f"GET {path}")
        return resp.content

    def blob_exists(self, repository: str, digest: str) -> bool:
        path = f"/v2/{repository}/blobs/{digest}"
        resp = self._request("HEAD", path, scope=_pull_scope(repository))
        if resp.status_code == 404:
            return False
        self._raise_for(resp, f"HEAD {path}")
        return True

    def put_blob(self, repository: str, digest: str, data: bytes) -> None:
        """Upload one blob (monolithic: POST then PUT ?digest=; the registry checks the digest)."""
        scope = _push_scope(repository)
        resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope)
        self._raise_for(resp, f"POST /v2/{repository}/blobs/uploads/")
        location = resp.headers.get("Location", "")
        if not location.startswith(("http://", "https://")):
            location = self.base + location
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        resp = self._request("PUT", location, scope=scope, data=data,
                             headers={"Content-Type": "application/octet-stream"})
        self._raise_for(resp, f"PUT blob {digest} into {repository}")

    def open_blob(self, repository: str, digest: str) -> Any:
        """A streamed GET of a blob: the caller reads resp.iter_content() and closes it."""
        path = f"/v2/{repository}/blobs/{digest}"
        resp = self._request("GET", path, scope=_pull_scope(repository), stream=True)
        self._raise_for(resp, f"GET {path}")
        return resp

    def upload_blob(self, repository: str, digest: str, chunks: Any) -> Any:
        """Upload a blob from an iterable of byte chunks without holding it in memory (POST,
        one streamed PATCH, PUT ?digest=: the registry commits it only if the digest matches).
        Returns the failing response (status >= 400) unraised, for the caller to explain, or None."""
        scope = _push_scope(repository)
        resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope)
        if resp.status_code >= 400:
            return resp
        location = self._location(resp)
        resp = self._request("PATCH", location, scope=scope, data=chunks,
                             headers={"Content-Type": "application/octet-stream"})
        if resp.status_code >= 400:
            return resp
        location = self._location(resp)
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        resp = self._request("PUT", location, scope=scope, headers={"Content-Length": "0"})
        return resp if resp.status_code >= 400 else None

    def _location(self, resp: Any) -> str:
        location = resp.headers.get("Location", "")
        return location if location.startswith(("http://", "https://")) else self.base + location

    def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest (by digest or tag); the digest the registry gives it."""
        path = f"/v2/{repository}/manifests/{reference}"
        resp = self._request("PUT", path, scope=_push_scope(repository), data=body,
                             headers={"Content-Type": media_type})
        self._raise_for(resp, f"PUT {path}")
        return resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    def layers(self, repository: str, reference: str) -> list[Layer]:
        """Layers of a single-platform image: compressed digest and size, with the diff ID."""
        m = self.manifest(repository, reference, accept=SINGLE_MANIFEST_TYPES)
        doc = m.json()
        if "layers" not in doc:
            raise RegistryError(f"{self.address}/{repository}@{m.digest} is a manifest list, not one image.",
                                registry=self.address)
        config = json.loads(self.blob(repository, doc["config"]["digest"]))
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        return [
            Layer(digest=layer["digest"], size=int(layer.get("size", 0)),
                  diff_id=diff_ids[i] if i < len(diff_ids) else "")
            for i, layer in enumerate(doc["layers"])
        ]

    def _raise_for(self, resp: Any, what: str) -> None:
        if resp.status_code < 400:
            return
        if resp.status_code in (401, 403):
            who = f"user '{self._credentials.username}'" if self._credentials is not None else "anonymous access"
            if self._withheld:
                who = f"anonymous access (the credentials were not sent to {self._withheld}: not HTTPS)"
            raise RegistryAuthError(
                f"registry {self.address} refused {what} for {who} (HTTP {resp.status_code}).",
                registry=self.address,
                fix="check the registry credentials (registry.username_env / password_env / credentials_file "
                "in the environment file) and that the user may access that repository.",
            )
        raise RegistryError(
            f"registry {self.address} answered HTTP {resp.status_code} to {what}: {_body_excerpt(resp)}",
            registry=self.address,
            fix="check the registry's logs; run the command again once it is healthy.",
        )


def _is_https(url: str) -> bool:
    return url.lower().startswith("https://")


def _pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _short(err: Exception) -> str:
    text = str(err)
    # requests wraps urllib3 wraps socket errors: keep the innermost reason.
    m = re.search(r"\[Errno [-\d]+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    m = re.search(r"(certificate verify failed[^'\"(]*)", text)
    if m:
        return m.group(1).strip()
    return text[:200]


def _body_excerpt(resp: Any) -> str:
    try:
        doc = resp.json()
        errors = doc.get("errors") or []
        if errors:
            return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)[:300]
    except Exception:
        pass
    return (resp.text or "")[:300]
