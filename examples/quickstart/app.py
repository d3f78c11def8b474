"""The story's job, the oncely way: a welcome email per signup, sent exactly once."""

from __future__ import annotations

import os

from oncely import Job, Oncely

jobs = Oncely()  # the store comes from ONCELY_STORE (default sqlite:///oncely.db)


@jobs.task(max_attempts=5)
async def send_welcome_email(user_id: int, *, job: Job) -> str:
    # A real app would send the email here, using job.idempotency_key as its Message-ID.
    print(f"pid {os.getpid()}: welcome email to user #{user_id} "
          f"(job {job.id}, attempt {job.attempt})", flush=True)
    return f"sent to user #{user_id}"
