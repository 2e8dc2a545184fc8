"""Where the client finds the server's URL and token.

URL:   the argument, else ``$DEEPGRAD_URL``, else the config file's ``url``, else http://127.0.0.1:8000.
Token: the argument, else ``$DEEPGRAD_TOKEN``, else the config file's ``token``, else the local server's
       token file ``$DEEPGRAD_DATA_DIR/token`` (default ``~/.deepgrad/token``), so that on the server's own
       machine nothing needs configuring. The token file is read only for a loopback URL: the local
       server's token is never sent to another host.

The config file is ``$DEEPGRAD_CONFIG``, else ``$XDG_CONFIG_HOME/deepgrad/config.json`` (default
``~/.config/deepgrad/config.json``): ``{"url": "http://gpu-box:8000", "token": "..."}``, both optional.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import DeepGradError

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Settings:
    """The resolved URL and token, and where each came from (for messages)."""

    url: str
    token: str | None
    url_source: str
    token_source: str | None


def config_path() -> Path:
    """The config file's path (it need not exist)."""
    if env := os.environ.get("DEEPGRAD_CONFIG"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "deepgrad" / "config.json"


def token_file_path() -> Path:
    """The local server's token file: ``<data dir>/token``."""
    data_dir = os.environ.get("DEEPGRAD_DATA_DIR")
    return (Path(data_dir).expanduser() if data_dir else Path.home() / ".deepgrad") / "token"


def resolve(url: str | None = None, token: str | None = None) -> Settings:
    """The URL and token to use, by the order in the module docstring."""
    needed = not (url or os.environ.get("DEEPGRAD_URL")) or not (token or os.environ.get("DEEPGRAD_TOKEN"))
    config = _read_config(config_path()) if needed else {}
    url, url_source = _first((url, "argument"), (os.environ.get("DEEPGRAD_URL"), "DEEPGRAD_URL"),
                             (config.get("url"), str(config_path())), (DEFAULT_URL, "default"))
    token, token_source = _first((token, "argument"), (os.environ.get("DEEPGRAD_TOKEN"), "DEEPGRAD_TOKEN"),
                                 (config.get("token"), str(config_path())), (None, None))
    if token is None and is_loopback(url):
        token_file = token_file_path()
        token = _read_token_file(token_file)
        token_source = str(token_file) if token else None
    return Settings(url=url.rstrip("/"), token=token, url_source=url_source, token_source=token_source)


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first(*candidates: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
    return next(((value, source) for value, source in candidates if value), (None, None))


def _read_config(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DeepGradError(f"cannot read the config file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeepGradError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("url", "token")):
        raise DeepGradError(f'config file {path} must be a JSON object like {{"url": "...", "token": "..."}}')
    return data


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:  # absent or unreadable: no token, the server will say 401 if it needs one
        return None
