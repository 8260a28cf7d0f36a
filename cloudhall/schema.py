"""Every table of every package, registered on the one metadata (for Alembic and tests)."""

from __future__ import annotations

from sqlalchemy import MetaData


def load_all_models() -> MetaData:
    """Import each package's table module and return the shared metadata."""
    import cloudhall.auth  # noqa: F401
    import cloudhall.catalog  # noqa: F401
    import cloudhall.identities  # noqa: F401
    import recordings.models  # noqa: F401
    import signaling.models  # noqa: F401
    from cloudhall.db import Base

    return Base.metadata
