#!/usr/bin/env bash
# Deploy the production environment (namespace mlops-production) and wait for its rollout.
# Options, all from the environment, are described in ../scripts/deploy.sh:
#   API_SERVER_TAG=1.5.0 ./infrastructure/production/deploy-production.sh
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/deploy.sh" production
