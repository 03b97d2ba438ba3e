"""`python -m archive upgrade` applies the archive's migrations now; `python -m archive purge` deletes the events
older than ARCHIVE_RETENTION_DAYS now. Both read the same settings as the service (.env, environment)."""

from __future__ import annotations

import argparse
import sys

from archive.store import UNAVAILABLE, ArchiveStore
from config import load_settings
from errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archive", description=__doc__)
    parser.add_argument("command", choices=["upgrade", "purge"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not settings.database_url:
        print("DATABASE_URL is not set: there is no archive to upgrade or purge", file=sys.stderr)
        return 2
    store = ArchiveStore(settings.database_url)
    try:
        if args.command == "upgrade":
            applied = store.migrate()
            print(f"applied: {', '.join(applied)}" if applied else "the archive's schema is up to date")
        else:
            if not settings.archive_retention_days:
                print("ARCHIVE_RETENTION_DAYS is empty: events are kept forever, nothing to purge")
                return 0
            removed = store.purge(older_than_days=settings.archive_retention_days)
            print(f"purged {removed} events older than {settings.archive_retention_days} days")
    except UNAVAILABLE as exc:
        print(f"PostgreSQL cannot be reached at DATABASE_URL: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
