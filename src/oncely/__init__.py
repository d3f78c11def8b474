"""oncely: run background jobs exactly once across any number of replicas,
driven by external triggers."""

from .app import Oncely
from .errors import (
    ConfigError,
    InvalidArguments,
    JobNotFound,
    OncelyError,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    UnknownTask,
)
from .model import JobRecord, JobState
from .retry import Backoff
from .worker import Job, Summary

__all__ = [
    "Backoff",
    "ConfigError",
    "InvalidArguments",
    "Job",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "Oncely",
    "OncelyError",
    "SchemaTooNew",
    "StoreError",
    "StoreUnavailable",
    "Summary",
    "UnknownTask",
]
