# consent-gateway container image.
#
#   docker build -t consent-gateway .
#   docker run --rm -p 8080:8080 consent-gateway
#
# The shipped config (config/ -> /etc/consent-gateway/) binds the proxy on 0.0.0.0:8080 and the
# admin endpoint on 127.0.0.1:9090 (reachable from inside the container only; see docs/operations.md "Docker").

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads: the manifest, the lock file and every target the manifest names
# (the [[bench]] target must exist for the manifest to load).
COPY Cargo.toml Cargo.lock ./
# jemalloc's settings compiled into the binary (the [env] of .cargo/config.toml).
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
# The cookie knowledge base compiled into the binary (include_str!).
COPY data/knowledge-base.tsv ./data/knowledge-base.tsv
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/consent-gateway /out/consent-gateway

# ---- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: for https upstreams. The version is left to the bookworm-slim base, which is
# what pins the rest of the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 consent-gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin consent-gateway \
    && mkdir -p /etc/consent-gateway/certs
COPY --from=build /out/consent-gateway /usr/local/bin/consent-gateway
# gateway.toml and hosts/*.toml. Mount a directory over /etc/consent-gateway (or over hosts/) to
# use your own registry; certs/ is the mount point for TLS material.
COPY config/ /etc/consent-gateway/
EXPOSE 8080 8443 9090
USER 10001:10001
# No curl in the image: bash's /dev/tcp speaks to the admin endpoint on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1\\.[01] 200' <&3"]
ENTRYPOINT ["consent-gateway"]
CMD ["run", "--config", "/etc/consent-gateway/gateway.toml", "--log-format", "json"]
