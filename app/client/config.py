"""Where `retune login` keeps the service URL and the API key: a JSON file only its owner can read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Credentials:
    url: str
    key: str


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/retune/config.json`` (``~/.config`` when unset), the XDG base directory convention."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "retune" / "config.json"


def save_credentials(creds: Credentials) -> Path:
    """Write the file with mode 0600 from its creation on, so the key is never readable by others, even briefly."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": creds.url, "key": creds.key}, fh)
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask and ignored for an existing file
    os.replace(tmp, path)
    return path


def load_credentials() -> Credentials | None:
    path = config_path()
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Credentials(url=data["url"], key=data["key"])
