"""Webhook secrets encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key is ``UNITY_WEBHOOK_SECRET_KEY`` when set (processes sharing a PostgreSQL database
must share it), else ``<data-dir>/webhooks.key``, created on first use with mode 0600.
Someone holding a copy of the database alone cannot sign deliveries.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from unity.errors import ConfigError

__all__ = ["SecretBox", "load_secret_box"]

KEY_FILE = "webhooks.key"


class SecretBox:
    """Encrypts and decrypts webhook secrets with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigError("the webhook secret key is not a Fernet key") from exc

    def encrypt(self, secret: str) -> str:
        """The encrypted form of ``secret``, as text for a database column."""
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The secret; ``ConfigError`` when it was encrypted with another key."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a webhook secret cannot be decrypted: the data dir's webhooks.key (or "
                "UNITY_WEBHOOK_SECRET_KEY) is not the key it was stored with"
            ) from exc


def load_secret_box(data_dir: Path, key: str | None = None) -> SecretBox:
    """The box for ``key``, or for the key file in ``data_dir`` (created when missing)."""
    if key:
        return SecretBox(key.encode())
    path = data_dir / KEY_FILE
    try:
        return SecretBox(path.read_bytes().strip())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    new = Fernet.generate_key()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process made it first: use theirs.
        return SecretBox(path.read_bytes().strip())
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc}") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(new + b"\n")
    return SecretBox(new)
