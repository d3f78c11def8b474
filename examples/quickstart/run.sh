#!/usr/bin/env bash
# The story in miniature, on the embedded SQLite store: three "pods" each enqueue the
# same welcome emails (idempotent keys), then all three process the queue at the same
# time. Every user gets exactly one email.
set -euo pipefail
cd "$(dirname "$0")"
ONCELY="${ONCELY:-../../.venv/bin/oncely}"
export ONCELY_STORE="sqlite:///${TMPDIR:-/tmp}/oncely-quickstart-$$.db"
trap 'rm -f "${ONCELY_STORE#sqlite:///}"*' EXIT

echo "== 3 pods enqueue welcome emails for users 1..5 (same keys on every pod)"
for pod in a b c; do
  for user in 1 2 3 4 5; do
    "$ONCELY" enqueue send_welcome_email --app app:jobs --arg user_id=$user --key welcome:$user >/dev/null
  done
done

echo "== 3 pods run 'oncely process' at the same moment"
for pod in a b c; do "$ONCELY" process --app app:jobs --budget 10 > "/tmp/oncely-quickstart-$$-$pod.json" & done
wait
cat /tmp/oncely-quickstart-$$-*.json; rm -f /tmp/oncely-quickstart-$$-*.json

echo "== the jobs table"
"$ONCELY" jobs --app app:jobs
