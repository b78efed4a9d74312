# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run as an unprivileged user on Debian slim.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin otpgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin otpgate
WORKDIR /app
COPY --from=build /src/target/release/otpgate /app/otpgate
COPY config /app/config
# The committed config keeps its data and certificates beside config/ (../data, ../certs).
RUN mkdir -p /app/data /app/certs && chown otpgate:otpgate /app/data /app/certs && chmod 0750 /app/data /app/certs
USER otpgate
# Inside a container the listeners must face the network, not loopback.
ENV OTPGATE_LISTEN__HTTP=0.0.0.0:8080 \
    OTPGATE_LISTEN__HTTPS=0.0.0.0:8443 \
    OTPGATE_LISTEN__ADMIN=0.0.0.0:9090
EXPOSE 8080 8443 9090
VOLUME ["/app/data"]
ENTRYPOINT ["/app/otpgate"]
CMD ["serve", "--config", "/app/config/otpgate.yaml"]
