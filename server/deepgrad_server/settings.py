"""One ``Settings`` object, read from ``DEEPGRAD_*`` environment variables or ``.env``.

It refuses insecure combinations: a non-loopback bind address with auth off.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deepgrad_server.hosts import is_loopback_name

log = logging.getLogger(__name__)

TOKEN_FILE = "token"
MIN_TOKEN_CHARS = 16


def check_token(token: str) -> str:
    """A bearer token a client can send: 16+ visible ASCII characters (no spaces, no controls)."""
    bad = sorted({c for c in token if not "\x21" <= c <= "\x7e"})
    if bad:
        raise ValueError(f"the token holds {', '.join(repr(c) for c in bad)}: a bearer token must be visible "
                         "ASCII characters only (no spaces), or no client can send it; e.g. "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}")
    return token


class Settings(BaseSettings):
    """Server settings; every field is ``DEEPGRAD_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DEEPGRAD_", env_file=".env", extra="ignore",
                                      env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".deepgrad")
    data_root: Path | None = Field(default=None, description="data sets by name; default <data_dir>/data")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite in data_dir")
    auth: bool = True
    token: str | None = Field(default=None, description="16+ visible ASCII characters; unset: generated at "
                              "first start")
    allowed_hosts: str | None = Field(default=None, description="comma-separated Host names the API answers "
                                      "('*': any); unset: loopback names only when auth is off, any when it is on")
    device: str | None = Field(default=None, pattern=r"^(cpu|cuda(:\d+)?)(,(cpu|cuda(:\d+)?))*$",
                               description="cuda, cuda:1, cpu, or a list (cuda:0,cuda:1: one worker per GPU); "
                                           "unset: CUDA when present")
    worker: bool = True  # run the embedded worker in the server process
    job_start: Literal["forkserver", "spawn"] = Field(default="forkserver", description="how local job processes "
                                                      "start: forked from a process that has imported torch once "
                                                      "(fast), or spawn (a fresh interpreter per job)")
    executor: Literal["local", "ray"] = Field(default="local", description="where jobs run: local (child "
                                              "processes of this server) or ray (a Ray cluster's nodes)")
    ray_address: str | None = Field(default=None, description="the Ray cluster's Jobs API (its dashboard), e.g. "
                                    "http://head:8265; token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    ray_gpus_per_job: float = Field(default=1.0, ge=0, description="GPUs each job asks Ray for (0 on a CPU "
                                    "cluster)")
    ray_cpus_per_job: float = Field(default=1.0, gt=0, description="CPUs each job asks Ray for")
    ray_max_jobs: int = Field(default=16, ge=1, le=256, description="most jobs in flight on the cluster (fewer "
                              "when it has fewer slots)")
    ray_python: str = Field(default="python", min_length=1, description="the interpreter with DeepGrad installed "
                            "on the cluster's nodes")
    checkpoint_dir: Path | None = Field(default=None, description="job checkpoints; with the Ray executor a "
                                        "folder every node reaches at this path; default <data_dir>/jobs")
    max_epochs: int = Field(default=200, ge=1)
    max_batch_size: int = Field(default=1024, ge=1)
    max_width: float = Field(default=2.0, gt=0)
    max_queued: int = Field(default=100, ge=1)
    max_study_jobs: int = Field(default=64, ge=1, le=10_000, description="most jobs one study may have")
    max_steps: int = Field(default=1_000_000, ge=1, le=2**31 - 1, description="largest epochs x steps per epoch of "
                           "one job (steps are 32-bit integer columns in the store)")
    max_job_memory_gib: float | None = Field(default=None, gt=0, description="largest estimated memory of one "
                                             "job; unset: 85% of the memory this server may use (its cgroup "
                                             "limit or the machine's), less its own, shared by its CPU workers")
    max_retries: int = Field(default=2, ge=0, description="restarts of a job whose worker died")
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    public_docs: bool = Field(default=False, description="serve /docs and /openapi.json without the token")
    api_threads: int = Field(default_factory=lambda: min(32, 2 * (os.cpu_count() or 1)), ge=1, le=256,
                             description="threads serving requests (and database connections)")
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_connections: int = Field(default=1000, ge=8, description="open connections; at the limit the longest-"
                                 "idle one is closed (lowered to fit the process's open-file limit)")
    header_timeout: float = Field(default=15.0, gt=0, description="seconds a connection may take to send a "
                                  "request head (slow-client guard)")
    render_threads: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) // 2), ge=1, le=64,
                                description="figures rendered at once (apart from the request threads)")
    render_queue: int = Field(default=32, ge=0, description="figures waiting to render before 503")
    cache_mib: int = Field(default=256, ge=1, description="memory for finished jobs' figures and series")
    log_level: str = "info"

    @field_validator("token")
    @classmethod
    def _usable_token(cls, v: str | None) -> str | None:
        return None if v is None else check_token(v)

    @model_validator(mode="after")
    def _secure(self) -> Settings:
        if not self.auth and not is_loopback_name(self.host):
            raise ValueError(f"refusing to listen on {self.host} with auth disabled: anyone who can reach "
                             "it could run jobs; set DEEPGRAD_AUTH=true or DEEPGRAD_HOST=127.0.0.1")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        if self.executor == "ray":
            if not self.ray_address:
                raise ValueError("executor=ray needs ray_address: the Ray cluster's Jobs API, e.g. "
                                 "http://head:8265 (DEEPGRAD_RAY_ADDRESS or --ray-address)")
            if self.resolved_database_url.startswith("sqlite"):
                raise ValueError("executor=ray needs a database every node can write to: the cluster's jobs "
                                 "cannot reach this server's SQLite file; set DEEPGRAD_DATABASE_URL to a "
                                 "PostgreSQL URL (postgresql+psycopg://user:password@host/db)")
        return self

    @property
    def devices(self) -> list[str | None]:
        """One entry per worker: each trains one job at a time on its device (None: CUDA when present)."""
        return [d.strip() for d in self.device.split(",")] if self.device else [None]

    @property
    def host_allowlist(self) -> tuple[str, ...] | None:
        """Host names to answer from ``allowed_hosts`` ('*': any); None when unset."""
        if not self.allowed_hosts:
            return None
        return tuple(h.strip() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def resolved_data_root(self) -> Path:
        return self.data_root if self.data_root is not None else self.data_dir / "data"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'deepgrad.db'}"

    @property
    def cache_dir(self) -> Path:
        """Decoded data sets (bounded: ``$DEEPGRAD_CACHE_MAX_GIB``, 2 GiB by default), never in the data root."""
        return self.data_dir / "cache"

    @property
    def jobs_dir(self) -> Path:
        """Per-job working folders (checkpoints) of local jobs."""
        return self.data_dir / "jobs"

    @property
    def resolved_checkpoint_dir(self) -> Path:
        """Where jobs keep their checkpoints (``checkpoint_dir``, else ``jobs_dir``)."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.jobs_dir

    def ensure_token(self) -> tuple[str | None, bool]:
        """The bearer token and whether it was generated now (then it is printed once).

        ``DEEPGRAD_TOKEN`` wins; else ``<data_dir>/token`` (mode 0600), created on first start.
        """
        if not self.auth:
            return None, False
        if self.token:
            return self.token, False
        path = self.data_dir / TOKEN_FILE
        if path.exists():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            token = path.read_text().strip()
            if len(token) >= MIN_TOKEN_CHARS:
                try:
                    return check_token(token), False
                except ValueError as err:
                    raise ValueError(f"{path}: {err}; fix the file, or delete it for a new token") from err
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, True
