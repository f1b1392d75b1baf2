#!/usr/bin/env bash
# The main job: set up what is missing, start a local crash lab of two real guests (QEMU,
# Debian kernel, real kdump), run experiments/crash-capture.yaml with `chaos run` against
# it, and print what happened. Pass --fleet default.yaml for the simulated fleet.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" lab
exec chaosec2panic demo --experiment experiments/crash-capture.yaml "$@"
