"""Ports and volumes of a service: the short syntax (`"127.0.0.1:8080:80/tcp"`,
`"./conf:/etc/app:ro"`) parsed, and the long syntax normalized (`PortsVolumes`, part of the
Normalizer: it uses its err, size and problems)."""

from __future__ import annotations

from typing import Any

from orchestrator.core.yamlsrc import YList

from .coerce import as_bool, as_int, as_str, dedupe_by
from .model import PortMapping, VolumeMount
from .paths import is_host_path, split_volume_spec
from .problems import did_you_mean

PROTOCOLS = ("tcp", "udp", "sctp")
PROPAGATIONS = ("shared", "rshared", "slave", "rslave", "private", "rprivate")
CONSISTENCY = ("consistent", "cached", "delegated", "default")


# --------------------------------------------------------------------------- ports
class SyntaxProblem(ValueError):
    pass


def _port_range(text: str, what: str, spec: str) -> tuple[int, int]:
    a, sep, b = text.partition("-")
    if not a.isdigit() or (sep and not b.isdigit()):
        raise SyntaxProblem(f"{what} port {text!r} is not a number or a range like 8000-8010")
    lo, hi = int(a), int(b) if sep else int(a)
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise SyntaxProblem(f"port {p} is out of range 1-65535")
    if hi < lo:
        raise SyntaxProblem(f"port range {text!r} ends before it starts")
    return lo, hi


def parse_port(spec: Any) -> list[PortMapping]:
    """Short syntax `[[IP:]PUBLISHED:]TARGET[/PROTOCOL]` (ranges allowed) -> long form."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= 65535:
            raise SyntaxProblem(f"port {spec} is out of range 1-65535")
        return [PortMapping(target=spec)]
    text = str(spec).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise SyntaxProblem(f"unknown protocol {protocol!r} (use tcp, udp or sctp)")
    host_ip = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise SyntaxProblem("an IPv6 address must be written [ADDRESS]:PUBLISHED:TARGET")
        host_ip = text[1:end]
        rest = text[end + 2:].split(":")
        if len(rest) != 2:
            raise SyntaxProblem("expected [ADDRESS]:PUBLISHED:TARGET")
        published, target = rest
    else:
        parts = text.split(":")
        target = parts[-1]
        published = parts[-2] if len(parts) >= 2 else ""
        if len(parts) >= 3:
            host_ip = ":".join(parts[:-2]).strip("[]")
    if not target:
        raise SyntaxProblem("the container port is missing")
    t_lo, t_hi = _port_range(target, "container", str(spec))
    if published:
        p_lo, p_hi = _port_range(published, "published", str(spec))
    else:
        p_lo = p_hi = None
    host_ip = host_ip or None
    if t_lo == t_hi:
        pub = None if p_lo is None else (str(p_lo) if p_lo == p_hi else f"{p_lo}-{p_hi}")
        return [PortMapping(target=t_lo, published=pub, protocol=protocol, host_ip=host_ip)]
    count = t_hi - t_lo + 1
    if p_lo is not None and p_hi - p_lo + 1 != count:
        raise SyntaxProblem(
            f"the published range {published} and the container range {target} differ in length")
    return [
        PortMapping(target=t_lo + i, published=None if p_lo is None else str(p_lo + i),
                    protocol=protocol, host_ip=host_ip)
        for i in range(count)
    ]


def port_key(p: PortMapping) -> tuple:
    return (p.host_ip or "", p.published or "", p.target, p.protocol)


# --------------------------------------------------------------------------- volumes
def parse_volume(spec: str) -> VolumeMount:
    """Short syntax `[SOURCE:]TARGET[:OPTIONS]` -> long form."""
    source, target, mode = split_volume_spec(spec)
    if source == "":
        raise SyntaxProblem("the source before ':' is empty")
    if not target:
        raise SyntaxProblem("the container path is missing")
    if source is None:
        vm = VolumeMount(type="volume", source=None, target=target)
    elif is_host_path(source):
        vm = VolumeMount(type="bind", source=source, target=target, create_host_path=True)
    else:
        vm = VolumeMount(type="volume", source=source, target=target)
    if mode:
        for opt in mode.split(","):
            if opt == "ro":
                vm.read_only = True
            elif opt == "rw":
                vm.read_only = False
            elif opt in ("z", "Z"):
                vm.selinux = opt
            elif opt == "nocopy":
                vm.nocopy = True
            elif opt in PROPAGATIONS:
                vm.propagation = opt
            elif opt in CONSISTENCY:
                vm.consistency = opt
            else:
                near = did_you_mean(opt, ("ro", "rw", "z", "Z", "nocopy") + PROPAGATIONS)
                hint = f" (did you mean {near!r}?)" if near else ""
                raise SyntaxProblem(f"unknown volume option {opt!r}{hint}")
    _check_target(target)
    return vm


def _check_target(target: str) -> None:
    if not target.startswith("/"):
        raise SyntaxProblem(f"the container path {target!r} must be absolute (start with /)")


class PortsVolumes:
    """The normalizer's `ports` and `volumes` (short and long syntax)."""

    def ports(self, v: Any, path: tuple) -> list[PortMapping]:
        if not isinstance(v, list):
            return []
        out: list[PortMapping] = []
        for i, item in enumerate(v):
            if isinstance(item, dict):
                pm = self.port_long(item, path + (i,))
                if pm is not None:
                    out.append(pm)
                continue
            if item is None or isinstance(item, (bool, list)):
                continue
            try:
                out.extend(parse_port(item))
            except SyntaxProblem as e:
                self.problems.error(
                    f"invalid port {str(item)!r}: {e}", loc=v.loc_of(i) if isinstance(v, YList) else None,
                    path=path + (i,),
                    fix='write [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL] with ports 1-65535, '
                        'e.g. "8080:80" or "127.0.0.1:8080:80/tcp"',
                )
        return dedupe_by(out, port_key)

    def port_long(self, item: dict, path: tuple) -> PortMapping | None:
        target = as_int(item.get("target"))
        if target is None or not 1 <= target <= 65535:
            if item.get("target") is not None:
                self.err(item, "target", path + ("target",),
                         f"invalid container port {item.get('target')!r}", fix="use a port 1-65535")
            return None
        published = item.get("published")
        pub = as_str(published) if published not in (None, "") else None
        if pub is not None:
            try:
                _port_range(pub, "published", pub)
            except SyntaxProblem as e:
                self.err(item, "published", path + ("published",), f"invalid published port: {e}",
                         fix="use a port 1-65535 or a range like 8000-8010")
        protocol = (as_str(item.get("protocol")) or "tcp").lower()
        if protocol not in PROTOCOLS:
            self.err(item, "protocol", path + ("protocol",), f"unknown protocol {protocol!r}",
                     fix="use tcp, udp or sctp")
        return PortMapping(target=target, published=pub, protocol=protocol,
                           host_ip=as_str(item.get("host_ip")) or None,
                           mode=as_str(item.get("mode")) or "ingress",
                           name=as_str(item.get("name")), app_protocol=as_str(item.get("app_protocol")))

    def volumes(self, v: Any, path: tuple) -> list[VolumeMount]:
        if not isinstance(v, list):
            return []
        out: list[VolumeMount] = []
        for i, item in enumerate(v):
            try:
                if isinstance(item, str):
                    out.append(parse_volume(item))
                elif isinstance(item, dict):
                    vm = self.volume_long(item, path + (i,))
                    if vm is not None:
                        out.append(vm)
            except SyntaxProblem as e:
                self.problems.error(
                    f"invalid volume {item if isinstance(item, str) else 'entry'!r}: {e}",
                    loc=v.loc_of(i) if isinstance(v, YList) else None, path=path + (i,),
                    fix='write SOURCE:TARGET[:ro], e.g. "data:/var/lib/data" or "./conf:/etc/app:ro"',
                )
        return dedupe_by(out, lambda m: m.target)

    def volume_long(self, item: dict, path: tuple) -> VolumeMount | None:
        vtype = as_str(item.get("type"))
        target = as_str(item.get("target"))
        if vtype is None:
            return None
        if not target:
            self.err(item, "target", path, "a volume needs a target (the path in the container)",
                     fix="add target: /path/in/container", value=False)
            return None
        if vtype != "npipe":
            _check_target(target)
        source = as_str(item.get("source")) or None
        vm = VolumeMount(type=vtype, source=source, target=target,
                         read_only=bool(as_bool(item.get("read_only")) or False),
                         consistency=as_str(item.get("consistency")))
        bind = item.get("bind")
        if isinstance(bind, dict):
            vm.propagation = as_str(bind.get("propagation"))
            if "create_host_path" in bind:
                vm.create_host_path = as_bool(bind["create_host_path"])
            vm.selinux = as_str(bind.get("selinux"))
        vol = item.get("volume")
        if isinstance(vol, dict):
            if "nocopy" in vol:
                vm.nocopy = as_bool(vol["nocopy"])
            vm.subpath = as_str(vol.get("subpath"))
        tmpfs = item.get("tmpfs")
        if isinstance(tmpfs, dict):
            if "size" in tmpfs:
                vm.tmpfs_size = self.size(tmpfs, "size", path + ("tmpfs",))
            if "mode" in tmpfs:
                m = tmpfs["mode"]
                vm.tmpfs_mode = m if isinstance(m, int) else (int(m, 8) if isinstance(m, str) and m.isdigit() else None)
        if vtype == "bind" and not source:
            self.err(item, "type", path, "a bind mount needs a source (a host path)",
                     fix="add source: ./path/on/host")
        if vtype == "tmpfs" and source:
            self.err(item, "source", path + ("source",), "a tmpfs mount takes no source",
                     fix="remove source:")
        return vm
