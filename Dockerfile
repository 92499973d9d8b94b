# Multi-stage build: compile with the committed sqlx offline data (no database
# needed at build time), run on a slim Debian with only CA certificates + curl.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
# The whole crate (Cargo.toml names the tests, benches and examples, so they
# must be present even though only the binary is built); see .dockerignore.
COPY . .
RUN cargo build --release --locked --bin smartdrop-webhooks

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 smartdrop
COPY --from=build /src/target/release/smartdrop-webhooks /usr/local/bin/smartdrop-webhooks
USER smartdrop
ENV HOST=0.0.0.0 PORT=3000 LOG_FORMAT=json
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD curl -fsS http://127.0.0.1:3000/health || exit 1
ENTRYPOINT ["smartdrop-webhooks"]
CMD ["serve"]
