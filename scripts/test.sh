#!/usr/bin/env bash
# The test command: install torc_slurm with its test extras, bring up the local Slurm cluster
# (Debian's slurm-wlm, installed by scripts/start-local-slurm.sh when missing; needs root or
# passwordless sudo), then run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    bash scripts/start-local-slurm.sh start
else
    echo "test.sh: not root and no passwordless sudo: the Slurm tests will be skipped" \
         "(or fail, with CI=true or TORC_REQUIRE_SLURM=1)" >&2
fi

exec python3 -m pytest "$@"
