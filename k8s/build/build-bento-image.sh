#!/usr/bin/env bash
# Skaffold custom build step for the model service image: `bentoml build` of the root
# bentofile.yaml, then `bentoml containerize` to the image Skaffold asks for.
# Skaffold sets: IMAGE (name:tag to produce), PUSH_IMAGE (true/false), BUILD_CONTEXT (repo root).
# By hand: IMAGE=bento-rollout/iris-service:dev PUSH_IMAGE=false BUILD_CONTEXT=. k8s/build/build-bento-image.sh
# Your own models: BENTO_MODELS="wine:v1 wine:v2" IMAGE=my/wine-service:1 k8s/build/build-bento-image.sh
set -euo pipefail
: "${IMAGE:?IMAGE is not set: run this from skaffold (or set IMAGE=name:tag)}"
cd "${BUILD_CONTEXT:-.}"
BENTOML="${BENTOML:-.venv/bin/bentoml}"
[ -x "$BENTOML" ] || BENTOML="$(command -v bentoml)" || { echo "bentoml not found: run 'make setup'" >&2; exit 1; }
export BENTOML_HOME="${BENTOML_HOME:-$PWD/.cache/bentoml}"
# BENTO_MODELS="wine:v1 wine:v2": pack those models (registered with `rollout import`) instead of
# the bentofile's iris variants (rollout/k8s/bentofile.py writes the bentofile that lists them)
bentofile=bentofile.yaml
if [ -n "${BENTO_MODELS:-}" ]; then
  PYTHON="$(dirname "$BENTOML")/python"
  bentofile="$("$PYTHON" -m rollout.k8s.bentofile --models "$BENTO_MODELS" --out .cache/bentofile-models.yaml)"
elif [ "${SKIP_TRAIN:-false}" != true ]; then
  # the models the bentofile packs must be in the store: train them (seeded, idempotent) if missing
  make --no-print-directory models
fi
tag="$("$BENTOML" build -f "$bentofile" --output tag . | sed -n 's/^__tag__://p' | tail -1)"
[ -n "$tag" ] || { echo "bentoml build printed no tag" >&2; exit 1; }
echo "built bento $tag; containerizing as $IMAGE"
"$BENTOML" containerize "$tag" --image-tag "$IMAGE"
if [ "${PUSH_IMAGE:-false}" = true ]; then
  docker push "$IMAGE"
fi
