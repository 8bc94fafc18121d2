"""Secrets and configs, pure: their contents travel inside the ServiceSpec (base64), read
through `Sources` (orchestrator.io.files.local_sources reads the controller's files and
variables) from `file:`, `environment:` or `content:`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.limits import SECRET_MAX_BYTES
from orchestrator.core.specs.keys import ServiceChecks

MAX_FILE_BYTES = 1024 * 1024  # agent.wire.spec.MAX_FILE_BYTES: files travel inside one JSON line


@dataclass(frozen=True)
class Sources:
    """Where secret and config contents come from: read_file(path, max_bytes, what) for
    `file:` (a bounded read), environ for `environment:` (after the project's variables)."""

    read_file: Callable[[str, int, str], bytes]
    environ: Mapping[str, str]


class SecretsConfigs(ServiceChecks):
    """A service's secrets: and configs: as files with their contents, mode, uid and gid."""

    def _files(self, section: str, refs: list, declared: Mapping[str, Any], default_mode: int) -> list[dict]:
        out = []
        for i, ref in enumerate(refs):
            key = f"{section}[{i}]"
            decl = declared.get(ref.source)
            if decl is None:
                self.refuse(key, f"{section[:-1]} {ref.source} is not declared", f"declare it under top-level {section}:")
                continue
            if decl.external:
                self.refuse(key, f"external {section[:-1]} {ref.source} is not supported (it needs Swarm)",
                            "use file: (or environment:) instead of external: true")
                continue
            try:
                data = self._content(section, ref.source, decl)
            except OSError as err:
                self.refuse(key, f"cannot read {section[:-1]} {ref.source} from {decl.file}: {err.strerror or err}",
                            "create the file or fix file: under top-level " + section)
                continue
            if data is None:
                continue
            if len(data) > MAX_FILE_BYTES:
                self.refuse(key, f"{section[:-1]} {ref.source} is larger than {MAX_FILE_BYTES} bytes")
                continue
            entry: dict[str, Any] = {"name": ref.source, "target": ref.target,
                                     "content": base64.b64encode(data).decode("ascii"),
                                     "mode": ref.mode if ref.mode is not None else default_mode}
            for attr in ("uid", "gid"):
                value = getattr(ref, attr)
                if value not in (None, ""):
                    if not str(value).isdigit():
                        self.refuse(f"{key}.{attr}", f"{attr} {value!r} must be a number")
                        continue
                    entry[attr] = int(value)
            out.append(entry)
        return out

    def _content(self, section: str, name: str, decl: Any) -> bytes | None:
        if decl.file:
            return self.sources.read_file(decl.file, SECRET_MAX_BYTES, f"a {section[:-1]} file")
        if decl.environment:
            value = self.project.variables.get(decl.environment)
            if value is None:
                value = self.sources.environ.get(decl.environment)
            if value is None:
                self.refuse(section, f"{section[:-1]} {name} reads the variable {decl.environment}, which is not set",
                            f"export {decl.environment}")
                return None
            return value.encode("utf-8")
        if decl.content is not None:
            return decl.content.encode("utf-8")
        self.refuse(section, f"{section[:-1]} {name} has no file:, environment: or content:")
        return None
