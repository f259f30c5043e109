# A PostgreSQL image for machines without a registry (scripts/images.sh): Debian's postgresql
# package, installed into a debootstrap base on the host, with an entrypoint that takes the same
# variables and data path as the registry's postgres image, so docker-compose.cluster.yml runs
# on either. Build context: docker/.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
# The data directory belongs to postgres before a volume is mounted on it, so that a new named
# volume starts owned by postgres too.
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
ENV PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
# SIGTERM asks PostgreSQL for a "smart" shutdown, which waits for every client to disconnect: a
# pool of grading connections would hold it until Docker kills it. SIGINT is the fast shutdown:
# clients are disconnected, and every committed transaction is on disk.
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
