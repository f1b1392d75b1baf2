#!/usr/bin/env bash
# The tests: set up what is missing, lint, then run the whole suite (lab tests included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" test
ruff check chaosec2panic tests
ruff format --check chaosec2panic tests
python -m pytest -q -p no:cacheprovider "$@"
