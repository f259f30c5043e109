# A Consul image for machines without a registry (scripts/images.sh): the agent that
# scripts/install-consul.sh provides, on the Debian base made by debootstrap. Used like the
# official image: `docker run IMAGE agent -dev -client 0.0.0.0`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY consul /usr/local/bin/consul
RUN useradd --system --uid 10002 --home-dir /consul --shell /usr/sbin/nologin consul \
 && mkdir -p /consul/data /consul/config \
 && chown -R consul:consul /consul
USER consul
WORKDIR /consul
# HTTP API and UI, DNS, then the server RPC and gossip ports a cluster uses.
EXPOSE 8500 8600 8600/udp 8300 8301 8301/udp 8302 8302/udp
ENTRYPOINT ["consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
