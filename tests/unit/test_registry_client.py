"""The registry API client against a scripted HTTP session (no network)."""

import hashlib

import pytest
import requests

from orchestrator.core.environments import RegistryCredentials
from orchestrator.io.registry_client import (
    ImageNotFound,
    RegistryError,
    RegistryAuthError,
    RegistryClient,
    RegistryTLSError,
    RegistryUnavailable,
    parse_reference,
)
from tests.unit.fakes import DIGEST, FakeResponse, FakeSession

PASSWORD = "s3cr3t-pa55"


def basic_registry(user="orch", password=PASSWORD):
    """A registry with htpasswd auth: 401 Basic without (right) credentials."""

    def handler(method, url, headers, auth, params):
        if auth != (user, password):
            return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="lab"', "Docker-Distribution-API-Version": "registry/2.0"})
        if url.endswith("/v2/"):
            return FakeResponse(200, {"Docker-Distribution-API-Version": "registry/2.0"})
        if "/manifests/latest" in url:
            return FakeResponse(200, {"Docker-Content-Digest": DIGEST})
        return FakeResponse(404, json_body={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

    return handler


def test_parse_reference_normalises_like_docker():
    r = parse_reference("busybox")
    assert (r.registry, r.repository, r.tag, r.digest, r.reference) == ("docker.io", "library/busybox", None, None, "latest")
    r = parse_reference("debian:bookworm-slim")
    assert (r.repository, r.tag) == ("library/debian", "bookworm-slim")
    r = parse_reference("10.250.0.1:5000/hello/web:v1")
    assert (r.registry, r.repository, r.tag) == ("10.250.0.1:5000", "hello/web", "v1")
    r = parse_reference("ghcr.io/org/app@" + DIGEST)
    assert (r.registry, r.repository, r.digest, r.reference) == ("ghcr.io", "org/app", DIGEST, DIGEST)
    assert parse_reference("localhost/x").registry == "localhost"
    assert parse_reference("user/app:1").repository == "user/app"
    assert parse_reference("index.docker.io/library/busybox").registry == "docker.io"
    assert parse_reference("busybox:1.36").pinned(DIGEST) == "busybox@" + DIGEST
    for bad in ("", "UPPER/case", "a b", "x:"):
        with pytest.raises(ValueError):
            parse_reference(bad)


def test_ping_distinguishes_ok_bad_credentials_and_none():
    ok = RegistryClient("r:5000", credentials=RegistryCredentials("orch", PASSWORD), session=FakeSession(basic_registry()))
    res = ok.ping()
    assert res.ok and res.authenticated and res.auth_scheme == "basic"
    bad = RegistryClient("r:5000", credentials=RegistryCredentials("orch", "wrong"), session=FakeSession(basic_registry()))
    res = bad.ping()
    assert res.status == "unauthorized" and "refuses the credentials of user 'orch'" in res.detail
    anon = RegistryClient("r:5000", session=FakeSession(basic_registry()))
    res = anon.ping()
    assert res.status == "unauthorized" and "none are configured" in res.detail
    assert PASSWORD not in repr(ok) and PASSWORD not in repr(res)


def test_ping_down_and_tls_are_reported_not_raised():
    down = RegistryClient("r:5000", session=FakeSession(lambda *a: requests.exceptions.ConnectionError(
        "HTTPSConnectionPool: Max retries (Caused by NewConnectionError('[Errno 111] Connection refused'))")))
    res = down.ping()
    assert res.status == "down" and "connection refused" in res.detail
    slow = RegistryClient("r:5000", timeout=2, session=FakeSession(lambda *a: requests.exceptions.ConnectTimeout("timed out")))
    assert "no answer within 2s" in slow.ping().detail
    tls = RegistryClient("r:5000", ca_file="/x/ca.crt", session=FakeSession(lambda *a: requests.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1)")))
    res = tls.ping()
    assert res.status == "tls" and "/x/ca.crt" in res.detail and "certificate verify failed" in res.detail


def test_ca_file_is_used_for_verification():
    session = FakeSession(basic_registry())
    RegistryClient("r:5000", ca_file="/lab/ca.crt", credentials=RegistryCredentials("orch", PASSWORD),
                   session=session).ping()
    assert session.calls and all(call[4] == "/lab/ca.crt" for call in session.calls)


def test_manifest_digest_head_and_missing():
    c = RegistryClient("r:5000", credentials=RegistryCredentials("orch", PASSWORD), session=FakeSession(basic_registry()))
    assert c.manifest_digest("library/busybox", "latest") == DIGEST
    assert c.manifest_digest("library/busybox", "nope") is None
    with pytest.raises(ImageNotFound):
        c.manifest("library/busybox", "nope")


def test_head_without_digest_header_falls_back_to_hashing_the_body():
    body = b'{"schemaVersion": 2, "layers": []}'

    def handler(method, url, headers, auth, params):
        if method == "HEAD":
            return FakeResponse(200, {})
        return FakeResponse(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body)

    c = RegistryClient("r:5000", session=FakeSession(handler))
    assert c.manifest_digest("a/b", "1") == "sha256:" + hashlib.sha256(body).hexdigest()


def test_bearer_token_flow_sends_credentials_only_to_the_realm():
    seen = {}

    def handler(method, url, headers, auth, params):
        if url.startswith("https://auth.example/token"):
            seen["token_auth"] = auth
            seen["scope"] = params.get("scope")
            return FakeResponse(200, json_body={"token": "TKN"})
        if headers.get("Authorization") == "Bearer TKN":
            return FakeResponse(200, {"Docker-Content-Digest": DIGEST})
        assert auth is None
        return FakeResponse(401, {"WWW-Authenticate": 'Bearer realm="https://auth.example/token",service="reg"'})

    c = RegistryClient("reg.example", credentials=RegistryCredentials("u", PASSWORD), session=FakeSession(handler))
    assert c.manifest_digest("org/app", "1") == DIGEST
    assert seen == {"token_auth": ("u", PASSWORD), "scope": "repository:org/app:pull"}


def test_docker_hub_is_asked_at_its_api_host():
    c = RegistryClient("docker.io")
    assert c.base == "https://registry-1.docker.io"


def test_refused_request_raises_auth_error_without_the_password():
    c = RegistryClient("r:5000", credentials=RegistryCredentials("orch", "wrong"), session=FakeSession(basic_registry()))
    with pytest.raises(RegistryAuthError) as err:
        c.manifest_digest("library/busybox", "latest")
    assert "user 'orch'" in err.value.render() and "wrong" not in err.value.render()


def test_errors_raised_by_api_calls_carry_a_fix():
    c = RegistryClient("r:5000", session=FakeSession(lambda *a: requests.exceptions.ConnectionError("[Errno 111] Connection refused")))
    with pytest.raises(RegistryUnavailable) as err:
        c.manifest_digest("a/b", "1")
    assert err.value.fix and "connection refused" in err.value.message
    c = RegistryClient("r:5000", session=FakeSession(lambda *a: requests.exceptions.SSLError("certificate verify failed: x")))
    with pytest.raises(RegistryTLSError):
        c.blob_exists("a/b", DIGEST)


def test_layers_pair_compressed_blobs_with_diff_ids():
    import json

    manifest = {"schemaVersion": 2, "config": {"digest": "sha256:" + "c" * 64, "size": 10},
                "layers": [{"digest": "sha256:" + "1" * 64, "size": 100}, {"digest": "sha256:" + "2" * 64, "size": 7}]}
    config = {"rootfs": {"diff_ids": ["sha256:" + "d" * 64, "sha256:" + "e" * 64]}}

    def handler(method, url, headers, auth, params):
        if "/manifests/" in url:
            return FakeResponse(200, {"Docker-Content-Digest": DIGEST,
                              "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
                        json.dumps(manifest).encode())
        return FakeResponse(200, {}, json.dumps(config).encode())

    layers = RegistryClient("r:5000", session=FakeSession(handler)).layers("a/b", "1")
    assert [(ly.size, ly.diff_id[7:8]) for ly in layers] == [(100, "d"), (7, "e")]


def test_delete_manifest_by_digest_missing_and_deletes_disabled():
    answers = {DIGEST: FakeResponse(202), "sha256:" + "b" * 64: FakeResponse(404),
               "sha256:" + "c" * 64: FakeResponse(405, body=b'{"errors":[{"code":"UNSUPPORTED"}]}')}

    def handler(method, url, headers, auth, params):
        if auth != ("orch", PASSWORD):
            return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="lab"'})
        assert method == "DELETE"
        return answers[url.rsplit("/", 1)[1]]

    session = FakeSession(handler)
    c = RegistryClient("r:5000", credentials=RegistryCredentials("orch", PASSWORD), session=session)
    assert c.delete_manifest("hello/web", DIGEST) is True
    assert session.calls[-1][:2] == ("DELETE", f"https://r:5000/v2/hello/web/manifests/{DIGEST}")
    assert c.delete_manifest("hello/web", "sha256:" + "b" * 64) is False
    with pytest.raises(RegistryError) as err:
        c.delete_manifest("hello/web", "sha256:" + "c" * 64)
    assert "delete: enabled: true" in err.value.fix


def test_put_blob_uploads_to_the_location_given_and_put_manifest_returns_the_digest():
    body = b'{"schemaVersion": 2}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()

    def handler(method, url, headers, auth, params):
        if method == "POST" and url.endswith("/v2/app/web/blobs/uploads/"):
            return FakeResponse(202, {"Location": "/v2/app/web/blobs/uploads/u1?_state=x"})
        if method == "PUT" and "/blobs/uploads/u1?_state=x&digest=" + DIGEST in url:
            return FakeResponse(201)
        if method == "PUT" and url.endswith("/v2/app/web/manifests/" + digest):
            assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
            return FakeResponse(201, {"Docker-Content-Digest": digest})
        return FakeResponse(500, body=b"unexpected " + url.encode())

    session = FakeSession(handler)
    client = RegistryClient("r:5000", session=session)
    client.put_blob("app/web", DIGEST, b"layer")
    assert client.put_manifest("app/web", digest, "application/vnd.oci.image.manifest.v1+json", body) == digest
    assert [(m, u.split("/v2/")[1], d) for m, u, d in session.sent] == [
        ("PUT", f"app/web/blobs/uploads/u1?_state=x&digest={DIGEST}", b"layer"),
        ("PUT", f"app/web/manifests/{digest}", body)]
    with pytest.raises(RegistryError, match="HTTP 500"):
        client.put_blob("app/other", DIGEST, b"layer")
