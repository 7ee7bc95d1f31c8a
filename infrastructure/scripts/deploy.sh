#!/usr/bin/env bash
# Deploy one environment of the MLOps platform and wait until every workload has rolled out.
# Run through ../staging/deploy-staging.sh or ../production/deploy-production.sh.
#
# Usage: deploy.sh staging|production
#
# Environment:
#   API_SERVER_TAG    deploy this api-server release instead of the overlay's (e.g. 1.5.0)
#   MODEL_SERVER_TAG  deploy this model-server release instead of the overlay's (e.g. 2.2.0)
#   ROLLOUT_TIMEOUT   how long to wait for each workload to roll out (default 180s)
#   CONFIRM=yes       deploy to production without asking (it asks only when stdin is a terminal)
#
# Uses the kubectl on PATH and its current context. Never modifies the repository: a release
# asked for is set in a temporary kustomization layered on the overlay.
set -euo pipefail

environment=${1:?usage: deploy.sh staging|production}
infrastructure=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
overlay=$infrastructure/$environment
namespace=mlops-$environment
me=deploy-$environment.sh
timeout=${ROLLOUT_TIMEOUT:-180s}

[[ -f $overlay/kustomization.yaml ]] || { echo "$me: no overlay at $overlay" >&2; exit 2; }
command -v kubectl >/dev/null || { echo "$me: kubectl is not on PATH" >&2; exit 127; }

if [[ $environment == production && ${CONFIRM:-} != yes && -t 0 ]]; then
    context=$(kubectl config current-context 2>/dev/null || echo "none")
    read -r -p "Deploy to $namespace with kubectl context '$context'? [y/N] " answer
    [[ $answer == [yY]* ]] || { echo "$me: not deployed"; exit 1; }
fi

# For each release asked for: its image tag, and the change-cause that `kubectl rollout
# history` shows for the revision it creates.
images="" patches="" releases=""
for workload in api-server model-server; do
    variable=${workload^^}
    variable=${variable//-/_}_TAG
    tag=${!variable:-}
    [[ -n $tag ]] || continue
    # The OCI rule for tags; it also keeps anything that could break the YAML below out.
    if [[ ! $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
        echo "$me: $variable='$tag' is not an image tag" >&2
        exit 2
    fi
    releases+=" $workload:$tag"
    images+="
  - name: registry.local/mlops/$workload
    newTag: \"$tag\""
    patches+="
  - target: {kind: Deployment, name: $workload}
    patch: |-
      - op: add
        path: /metadata/annotations/kubernetes.io~1change-cause
        value: \"$me: $workload $tag\""
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$work" "$overlay")  # kustomize refuses absolute paths
images:$images
patches:$patches
YAML

echo "$me: applying $overlay to namespace $namespace${releases:+ with$releases}"
# Server-side, as `opslab lab up` applies it: the repository's values win over hand-made changes
# (--force-conflicts), and no last-applied annotation is written, so the guide's password
# rotation (`kubectl create secret … --from-literal=password=… | kubectl apply -f -`) later
# replaces the password without deleting the Secret's `username`.
applied=$(kubectl apply --server-side --force-conflicts -k "$work" -o name)
echo "$applied" | sed 's/^/  /'

failed=()
for workload in $(grep -E '^(deployment|statefulset)\.apps/' <<<"$applied"); do
    kubectl rollout status "$workload" -n "$namespace" --timeout="$timeout" || failed+=("$workload")
done

echo
columns=WORKLOAD:.metadata.name,READY:.status.readyReplicas,WANTED:.spec.replicas
columns+=,IMAGE:.spec.template.spec.containers[*].image
kubectl get deployments,statefulsets -n "$namespace" -l app.kubernetes.io/part-of=mlops-platform -o custom-columns="$columns"
if ((${#failed[@]})); then
    echo
    echo "$me: did not roll out (waited up to $timeout each): ${failed[*]}" >&2
    for workload in "${failed[@]}"; do
        echo "  inspect:   kubectl describe $workload -n $namespace" >&2
        echo "  roll back: kubectl rollout undo $workload -n $namespace" >&2
    done
    exit 1
fi
echo "$me: $namespace is rolled out"
