"""A service's `x-orch.ingress.tls: {cert, key}`: the certificate and key read (files
relative to the Compose file's directory, or top-level Compose secrets, through Sources)
and checked (orchestrator.core.certs) when the project is compiled, so a bad certificate is
bad input before any node is touched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.specs.keys import ServiceChecks

_KEY = "x-orch.ingress.tls"


class TlsFiles(ServiceChecks):
    def _with_certificate(self, ingress: Any) -> Any:
        """The IngressSpec with its FileCert (None after a problem, reported)."""
        from orchestrator.core.certs import CertProblem, check_file_cert

        src = getattr(ingress, "tls_source", None)
        if src is None:
            return ingress
        cert = self._tls_read(src.cert_path, src.cert_secret, "cert")
        key = self._tls_read(src.key_path, src.key_secret, "key")
        if cert is None or key is None:
            return None
        try:
            checked = check_file_cert(cert, key, ingress.route.hosts, cert_from=self._tls_where(src, "cert"),
                                      key_from=self._tls_where(src, "key"))
        except CertProblem as err:
            self.refuse(f"{_KEY}.{err.which}", err.message, err.fix)
            return None
        return replace(ingress, cert=checked)

    def _tls_where(self, src: Any, which: str) -> str:
        path, secret = (src.cert_path, src.cert_secret) if which == "cert" else (src.key_path, src.key_secret)
        if secret:
            return f"secret {secret}"
        return str(self._tls_path(path))

    def _tls_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.project.working_dir) / p

    def _tls_read(self, path: str, secret: str, which: str) -> bytes | None:
        from orchestrator.core.certs import MAX_PEM_FILE

        if secret:
            decl = self.project.secrets.get(secret)
            if decl is None:
                self.refuse(f"{_KEY}.{which}.secret", f"{_KEY}.{which} names the secret {secret}, which is not declared",
                            f"declare it under top-level secrets: (e.g. {secret}: {{file: ./{which}.pem}})")
                return None
            if decl.external:
                self.refuse(f"{_KEY}.{which}.secret", f"the secret {secret} is external, which orch cannot read",
                            "use file: or environment: for it")
                return None
            try:
                return self._content("secrets", secret, decl)
            except OSError as err:
                self.refuse(f"{_KEY}.{which}.secret", f"cannot read the secret {secret} from {decl.file}: "
                            f"{err.strerror or err}", "create the file or fix file: under top-level secrets")
                return None
        full = self._tls_path(path)
        try:
            return self.sources.read_file(str(full), MAX_PEM_FILE, f"the {which} file")
        except OSError as err:
            self.refuse(f"{_KEY}.{which}", f"cannot read {full}: {getattr(err, 'strerror', None) or err}",
                        f"create the file, or fix the path (relative to {self.project.working_dir})")
            return None
