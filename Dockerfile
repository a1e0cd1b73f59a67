# The crm-api service: a release build on Debian, run as an unprivileged user.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package crm-api

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/crm crm \
    && mkdir -p /var/lib/crm && chown crm /var/lib/crm
COPY --from=build /src/target/release/crm-api /usr/local/bin/crm-api
USER crm
WORKDIR /var/lib/crm
ENV CRM_BIND=0.0.0.0:8080 \
    CRM_DATA_DIR=/var/lib/crm/data \
    CRM_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["crm-api"]
