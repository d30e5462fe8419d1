"""Ray's token authentication with no Ray state in the user's home directory.

Since Ray 2.59, a local instance started by ``ray.init()`` turns token authentication on by default and, when no
token exists, writes a new one to ``~/.ray/auth_token``; ``ray start`` with ``RAY_AUTH_MODE=token`` needs a token
before it starts. Ray looks for the token in ``RAY_AUTH_TOKEN``, then in the file ``RAY_AUTH_TOKEN_PATH`` names,
then in ``~/.ray/auth_token``. autoselect keeps authentication on (a cluster on loopback still takes jobs from
every local user) and gives each cluster it starts itself a random token of its own in a private temporary folder,
named through ``RAY_AUTH_TOKEN_PATH``: nothing is read from or written to ``~/.ray``. A user who configured Ray's
authentication (any of :data:`AUTH_VARS` set) keeps their own settings.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["AUTH_VARS", "private_token", "local_instance_auth"]

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def private_token(folder: str | Path) -> dict[str, str]:
    """Write a new random token into ``folder`` (readable by this user only); returns the environment variables
    that hand it to every Ray node and driver."""
    path = Path(folder) / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


@contextmanager
def local_instance_auth() -> Iterator[None]:
    """Around ``ray.init()`` of a local instance: unless the user configured Ray's authentication, the instance
    (and the worker processes it starts, through this process's environment) uses a private token that is
    removed when the block ends."""
    if any(v in os.environ for v in AUTH_VARS):
        yield
        return
    folder = tempfile.mkdtemp(prefix="autoselect-ray-auth-")
    try:
        os.environ.update(private_token(folder))
        _reload_ray_auth()
        yield
    finally:
        for var in AUTH_VARS:
            os.environ.pop(var, None)
        _reload_ray_auth()
        shutil.rmtree(folder, ignore_errors=True)


def _reload_ray_auth() -> None:
    """Ray reads ``RAY_AUTH_MODE`` into a cached config and caches the token it loaded: after changing them in
    this process's environment, refresh both, as Ray itself does when it turns token authentication on
    (``ray._private.authentication.authentication_token_setup._enable_token_auth``)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
