-- What pruning reads: finished jobs, finished triggers and recorded occurrences by age.
CREATE INDEX oncely_jobs_finished ON oncely_jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX oncely_occurrences_recorded ON oncely_occurrences (recorded_at);
