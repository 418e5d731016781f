"""The admin side of the server: its token, and where uploaded product photos are kept.

Writes (:mod:`vsearch.web.routes.products`) take ``Authorization: Bearer <token>``, compared
in constant time (:func:`require_admin`, a route dependency). The token (:func:`admin_token`)
comes from ``--admin-token-file`` (stripped; an empty or unreadable file is an error) or else
``VSEARCH_ADMIN_TOKEN``; without one every write is 403. A missing or wrong token is 401
with ``WWW-Authenticate: Bearer``, checked before a byte of the body is read.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's annotations at runtime.
import hmac
import os
from pathlib import Path

from fastapi import HTTPException, Request

from vsearch.errors import DataError

TOKEN_ENV = "VSEARCH_ADMIN_TOKEN"
DISABLED = f"writes are disabled: start the server with {TOKEN_ENV} or --admin-token-file"


def admin_token(token_file: str | os.PathLike | None) -> str | None:
    """The admin token: ``token_file``'s content (stripped) if given, else ``$VSEARCH_ADMIN_TOKEN``.

    Returns None when neither is set (writes disabled).

    Raises:
        DataError: the file cannot be read, or holds only white space.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{token_file}: cannot read the admin token ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        if not token:
            raise DataError(f"{token_file}: the admin token file is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def default_media_dir(spec: str) -> Path | None:
    """Where uploaded photos are kept by default: ``media/`` beside a local store; None for a remote one."""
    from vsearch.stores import parse_spec

    _, where = parse_spec(spec)
    return None if "://" in where else Path(where).resolve().parent / "media"


def check_token(token: str | None, authorization: str | None) -> None:
    """Whether a write with this ``Authorization`` header may proceed; if not, the HTTPException (401 or 403)."""
    if token is None:
        raise HTTPException(403, DISABLED)
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(
            401, "this write needs an admin token: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise HTTPException(401, "wrong admin token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def require_admin(request: Request) -> None:
    """The route dependency of a write: the app's admin token (``app.state.admin_token``) in the
    request's ``Authorization`` header, checked before a byte of the body is read."""
    check_token(request.app.state.admin_token, request.headers.get("authorization"))
