# The rollout controller image: the `rollout` package and its dependencies (kopf, kubernetes,
# locust for the chart's load-test Job). Runs as a non-root user; the chart adds a read-only root
# filesystem and a /tmp emptyDir.
#   docker build -f k8s/build/controller.Dockerfile .          (from the repo root; a registry's python)
#   --build-arg BASE_IMAGE=...  any image with python3 >= 3.11, pip and useradd (the tests build
#   it on a Debian base of their own, tests/k8s/buildah_images.py, where nothing can be pulled)
# The dependencies are installed in a layer of their own, from pyproject.toml alone, before the
# code (and README.md, which the package's metadata reads) is copied: a change in rollout/,
# bentos/ or README.md rebuilds only the last layers (seconds), one in pyproject.toml all of them.
# controller.Dockerfile.dockerignore keeps the context to what is copied.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# PIP_BREAK_SYSTEM_PACKAGES: a Debian python3 is "externally managed" (PEP 668); this image is
# the environment, so pip installs into it (python:3.11-slim ignores the variable)
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt \
    && useradd --uid 1034 --user-group --no-create-home bentoml
COPY README.md ./
COPY rollout ./rollout
COPY bentos ./bentos
COPY loadtests ./loadtests
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info
USER 1034:1034
ENTRYPOINT []
CMD ["rollout", "controller"]
