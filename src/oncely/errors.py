"""One exception root. Every message says what happened and what to do about it."""

from __future__ import annotations


class OncelyError(Exception):
    """Root of every error oncely raises on purpose."""


class ConfigError(OncelyError, ValueError):
    """A setting or argument has a value oncely cannot use."""


class UnknownTask(OncelyError, LookupError):
    """A job names a task that is not registered with this app."""


class InvalidArguments(OncelyError, ValueError):
    """A job's arguments are not JSON or do not fit the handler's signature."""


class JobNotFound(OncelyError, LookupError):
    """No job has the given id."""


class StoreError(OncelyError):
    """The job store failed; the original driver error is chained as __cause__."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retrying later may succeed."""


class SchemaTooNew(StoreError):
    """The store's schema was written by a newer oncely than this one."""
