# The join store's image: Debian's redis-server (the store of bentos/redis_join.py), nothing else.
# The chart runs it with the durable settings of rollout/local/redis.py (append-only file fsynced
# before every reply) and a password from its Secret; it writes only /data (an emptyDir or a PVC).
#   docker build -f k8s/build/redis.Dockerfile k8s/build        (a registry's Debian)
#   --build-arg BASE_IMAGE=...  any Debian bookworm image (the tests build it on their own Debian
#   base, tests/k8s/buildah_images.py, where nothing can be pulled)
# Users with a registry may as well run the official redis image: the chart passes every setting
# as arguments, so any redis-server >= 7 works (feedback.redis.image).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* /var/log/apt/* \
    && mkdir -p /data && chown 999:999 /data
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["--dir", "/data"]
