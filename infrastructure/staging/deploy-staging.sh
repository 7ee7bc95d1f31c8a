#!/usr/bin/env bash
# Deploy the staging environment (namespace mlops-staging) and wait for its rollout.
# Options, all from the environment, are described in ../scripts/deploy.sh:
#   API_SERVER_TAG=1.5.0 ./infrastructure/staging/deploy-staging.sh
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/deploy.sh" staging
