#!/usr/bin/env bash
# The main job: set up what is missing, start the local crash lab, run the bundled
# experiment with `chaos run` against it, and print what happened.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" lab
exec chaosec2panic demo --experiment experiments/crash-capture.yaml "$@"
