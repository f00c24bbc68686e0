# The rollout controller image: the `rollout` package and its dependencies (kopf, kubernetes,
# locust for the chart's load-test Job). Runs as a non-root user; the chart adds a read-only root
# filesystem and a /tmp emptyDir.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rollout ./rollout
COPY bentos ./bentos
COPY loadtests ./loadtests
RUN pip install . && useradd --uid 1034 --user-group --no-create-home bentoml
USER 1034:1034
ENTRYPOINT []
CMD ["rollout", "controller"]
