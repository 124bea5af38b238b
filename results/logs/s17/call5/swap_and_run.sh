#!/usr/bin/env bash
# Session 17, call 5: run a command with deepplan_backend/runtime/prepared.py replaced by the variant $CLONE names
# (deepcopy = bcdef29's, clone = 0b347bb's), so that benchmark.env_ab can run the two in one call (A B B A).
# The two copies sat beside it during the call and were removed afterwards: `git show bcdef29:deepplan_backend/runtime/
# prepared.py > prepared_deepcopy.py` and `git show 0b347bb:deepplan_backend/runtime/prepared.py > prepared_clone.py`.
set -euo pipefail
here=$(dirname "$0")
cp "$here/prepared_${CLONE:?}.py" deepplan_backend/runtime/prepared.py
exec "$@"
