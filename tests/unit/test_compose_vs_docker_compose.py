"""`orch config --json` (Project.to_dict) against `docker-compose config` on sample apps.

The reference is Debian's docker-compose 1.29.2 (v1). Both outputs are brought to the
same canonical shape before comparing (this file's own small parsers, independent
of orchestrator.core.compose), because v1 prints differently from the Compose spec (v2):

- v1 keeps short syntax where it can (ports "127.0.0.1:9000:9000/udp", volumes
  "data:/data:rw"), prints ints for published ports, sorts ports and volumes;
- v1 keeps `command: "a b"` as a string (v2 and orch split it into a list);
- v1 prints durations its own way (90s for 1m30s) and sizes as written (512M);
- v1 prints depends_on with `condition` only (v2/orch: condition, required, restart);
- v1 gives no `name:` to networks and volumes (v2/orch: <project>_<key>), and no
  default dockerfile (v2/orch: Dockerfile), no default secret target (orch:
  /run/secrets/<source>), and leaves out `networks: default` for services;
- v1 rejects the top-level `name:` key (the samples pass -p instead).
- v1 lists every declared network/volume; v2 and orch keep the ones enabled services use
  (all of them, in these samples).

Other v1 differences, where orch follows v2 (the Compose spec), kept out of the samples:
- YAML 1.1 (PyYAML) vs 1.2: v1 reads yes/no/on/off as booleans (so `restart: no` and
  `FLAG: yes` are rejected) and unquoted `22:22` as the base-60 number 1342;
- v1 has no ${VAR:+alt} / ${VAR+alt} and no nested templates;
- v1 does not inherit links, volumes_from and depends_on through extends; v2 merges the
  whole base service;
- v1 has no depends_on `required` / `restart`, no env_file `required: false`, no
  `!reset` / `!override`, no include.

Where v1 and v2 differ we follow v2 and normalise both sides to the spec's meaning.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.core.compose import LoadOptions, load_project

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"
DOCKER_COMPOSE = shutil.which("docker-compose")

needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose (v1) is not installed: nothing to compare with")

_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)")
_DUR_UNIT = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def secs(v):
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return float(sum(float(n) * _DUR_UNIT[u] for n, u in _DUR.findall(str(v))))


def size(v):
    if v is None:
        return None
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(v).lower())
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


def port_tuples(ports):
    out = []
    for p in ports or []:
        if isinstance(p, dict):
            pub = p.get("published")
            out.append((p.get("host_ip") or "", "" if pub is None else str(pub), int(p["target"]),
                        p.get("protocol") or "tcp"))
            continue
        text = str(p)
        proto = "tcp"
        if "/" in text:
            text, proto = text.rsplit("/", 1)
        parts = text.split(":")
        target = parts[-1]
        pub = parts[-2] if len(parts) > 1 else ""
        ip = ":".join(parts[:-2])
        if "-" in target:
            a, b = map(int, target.split("-"))
            pa = int(pub.split("-")[0]) if pub else None
            for i in range(b - a + 1):
                out.append((ip, "" if pa is None else str(pa + i), a + i, proto))
        else:
            out.append((ip, pub, int(target), proto))
    return sorted(out)


def volume_tuples(vols):
    out = []
    for v in vols or []:
        if isinstance(v, dict):
            out.append((v["type"], v.get("source"), v["target"], bool(v.get("read_only"))))
            continue
        parts = str(v).split(":")
        if len(parts) == 1:
            out.append(("volume", None, parts[0], False))
            continue
        src, tgt = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) > 2 else []
        kind = "bind" if src.startswith("/") else "volume"
        out.append((kind, src, tgt, "ro" in opts))
    return sorted(out, key=str)


def command(v):
    if v is None:
        return None
    return shlex.split(v) if isinstance(v, str) else [str(x) for x in v]


def kv(v):
    if v is None:
        return {}
    if isinstance(v, list):
        return dict((i.split("=", 1) + [None])[:2] for i in v)
    return {str(k): (None if x is None else str(x)) for k, x in v.items()}


def refs(items, prefix):
    out = []
    for r in items or []:
        if isinstance(r, str):
            r = {"source": r}
        target = r.get("target") or r["source"]
        if not target.startswith("/"):
            target = prefix + target
        out.append((r["source"], target))
    return sorted(out)


def canon_service(s: dict) -> dict:
    out: dict = {"image": s.get("image")}
    b = s.get("build")
    if b is not None:
        if isinstance(b, str):
            b = {"context": b}
        out["build"] = {"context": b["context"], "dockerfile": b.get("dockerfile") or "Dockerfile",
                        "target": b.get("target"), "args": kv(b.get("args"))}
    out["command"] = command(s.get("command"))
    out["entrypoint"] = command(s.get("entrypoint"))
    out["environment"] = kv(s.get("environment"))
    out["ports"] = port_tuples(s.get("ports"))
    out["expose"] = sorted(str(x) for x in s.get("expose") or [])
    out["volumes"] = volume_tuples(s.get("volumes"))
    nets = s.get("networks") or {}
    if isinstance(nets, list):
        nets = {n: None for n in nets}
    out["networks"] = {k: sorted((v or {}).get("aliases") or []) for k, v in nets.items()
                       if not (k == "default" and s.get("network_mode") is None and len(nets) == 1)}
    deps = s.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    out["depends_on"] = {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}
    hc = s.get("healthcheck")
    if hc is not None:
        test = hc.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        out["healthcheck"] = {"test": test, "interval": secs(hc.get("interval")),
                              "timeout": secs(hc.get("timeout")), "retries": hc.get("retries"),
                              "start_period": secs(hc.get("start_period"))}
    d = s.get("deploy")
    if d is not None:
        res = {}
        for kind, spec in (d.get("resources") or {}).items():
            res[kind] = {"cpus": float(spec["cpus"]) if spec.get("cpus") is not None else None,
                         "memory": size(spec.get("memory"))}
        rp = d.get("restart_policy")
        out["deploy"] = {
            "mode": d.get("mode"), "replicas": d.get("replicas"), "resources": res,
            "restart_policy": None if rp is None else {
                "condition": rp.get("condition"), "delay": secs(rp.get("delay")),
                "max_attempts": rp.get("max_attempts")},
        }
    out["labels"] = kv(s.get("labels"))
    out["secrets"] = refs(s.get("secrets"), "/run/secrets/")
    out["configs"] = refs(s.get("configs"), "/")
    for key in ("restart", "user", "stop_signal", "pid", "read_only", "profiles", "cap_drop",
                "tmpfs"):
        v = s.get(key)
        out[key] = [v] if key == "tmpfs" and isinstance(v, str) else v
    out["stop_grace_period"] = secs(s.get("stop_grace_period"))
    lg = s.get("logging")
    out["logging"] = None if lg is None else {"driver": lg.get("driver"),
                                               "options": kv(lg.get("options"))}
    return out


def canon_project(d: dict) -> dict:
    def section(name, fields):
        return {k: {f: (v or {}).get(f) for f in fields} for k, v in (d.get(name) or {}).items()}

    return {
        "services": {k: canon_service(v) for k, v in d["services"].items()},
        "networks": section("networks", ("driver", "internal")),
        "volumes": section("volumes", ("driver", "labels")),
        "secrets": section("secrets", ("file",)),
        "configs": section("configs", ("file",)),
    }


def v1_config(folder: Path, env: dict, project: str, files=()) -> dict:
    args = [DOCKER_COMPOSE, "-p", project]
    for f in files:
        args += ["-f", f]
    proc = subprocess.run(args + ["config"], cwd=folder, env={"PATH": os.environ.get("PATH", ""),
                          "HOME": os.environ.get("HOME", "/root"), **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def ours(folder: Path, env: dict, project: str, files=()) -> dict:
    opts = LoadOptions(files=[Path(f) for f in files], working_dir=folder, project_name=project,
                       environ={"HOME": os.environ.get("HOME", "/root"), **env})
    return load_project(opts).to_dict()


SAMPLES = [
    # (folder, environment, files)
    ("shop", {"FEATURE_FLAGS": "new-cart", "WEB_TAG": "1.4.2"}, ()),
    ("shop", {"API_WORKERS": "8", "LOG_LEVEL": "warning"}, ()),
    ("monitoring", {}, ()),
    ("layered/app", {}, ()),
    ("layered/app", {}, ("compose.yaml",)),
]


@needs_docker_compose
@pytest.mark.parametrize("folder,env,files", SAMPLES,
                         ids=["shop", "shop-env", "monitoring", "layered", "layered-no-override"])
def test_matches_docker_compose_config(folder, env, files):
    where = FIXTURES / folder
    expected = canon_project(v1_config(where, env, "sample", files))
    actual = canon_project(ours(where, env, "sample", files))
    assert actual["services"].keys() == expected["services"].keys()
    for name in expected["services"]:
        assert actual["services"][name] == expected["services"][name], name
    for section in ("networks", "volumes", "secrets", "configs"):
        assert actual[section] == expected[section], section


def test_samples_cover_the_brief():
    """The samples exercise what the acceptance criteria name."""
    shop = ours(FIXTURES / "shop", {}, "sample")
    web, api = shop["services"]["web"], shop["services"]["api"]
    assert web["build"]["target"] == "prod" and api["build"]["target"] == "runtime"
    # service_healthy chain: web -> api -> db
    assert web["depends_on"]["api"]["condition"] == "service_healthy"
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in shop["services"]["db"]
    assert shop["secrets"] and shop["volumes"] and len(shop["networks"]) >= 2
    mon = ours(FIXTURES / "monitoring", {}, "sample")
    assert len(mon["networks"]) >= 2 and mon["configs"] and mon["volumes"]


def test_yaml_output_escapes_dollars(tmp_path):
    (tmp_path / "compose.yaml").write_text("services: {web: {image: x, command: sh -c 'echo $$HOME'}}\n")
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    assert p.services["web"].command == ["sh", "-c", "echo $HOME"]
    assert "echo $$HOME" in p.to_yaml()
    assert p.to_dict()["services"]["web"]["command"][2] == "echo $HOME"


@pytest.mark.parametrize("folder", ["shop", "monitoring", "layered/app"])
def test_our_yaml_output_loads_back_the_same(tmp_path, folder):
    """to_yaml() is itself a valid Compose file that loads to the same project."""
    first = load_project(LoadOptions(working_dir=FIXTURES / folder, project_name="sample",
                                     environ={"FEATURE_FLAGS": "x"}))
    out = tmp_path / "compose.yaml"
    out.write_text(first.to_yaml())
    again = load_project(LoadOptions(files=[out], working_dir=tmp_path, environ={}))
    assert again.to_dict() == first.to_dict()
