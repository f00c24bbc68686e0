#!/bin/sh
# Run by BentoML's generated Dockerfile (bentofile.yaml docker.setup_script), as root, after the
# Python packages are installed. BentoML creates $BENTOML_HOME/{bentos,models,envs,tmp} at every
# start (validate_or_create_dir, even when they are never written); on a read-only root filesystem
# (the Helm chart's securityContext) that mkdir fails and the server never starts, so the image
# carries them, owned by the bentoml user.
set -eu
home="${BENTOML_HOME:-/home/bentoml}"
for d in bentos models envs tmp; do
  mkdir -p "$home/$d"
done
chown -R bentoml:bentoml "$home"
