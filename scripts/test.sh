#!/usr/bin/env bash
# The tests: set up what is missing, lint, run the whole suite (lab tests included), then
# build the documentation site strictly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" test
ruff check chaosec2panic tests scripts bench
ruff format --check chaosec2panic tests scripts bench
python -m pytest -q -p no:cacheprovider "$@"
# The documentation site: reference pages are generated from the code; a broken link fails.
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
