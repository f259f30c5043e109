# A Prometheus image for machines without a registry (scripts/images.sh): Debian bullseye's
# `prometheus` package (bookworm's has no Consul service discovery), installed by debootstrap into
# a base of its own on the host (containers cannot reach the mirror). Used like the official image: the entrypoint is the server, the command its flags,
# the configuration at /etc/prometheus/prometheus.yml (docker-compose.yml mounts docker/prometheus.yml).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# The package made the `prometheus` user; the data directory is where the official image has it.
RUN mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
