# syntax=docker/dockerfile:1
# Misiva's image: built with the same command and lockfile as CI
# (`cargo build --release --locked`), run as a non-root numeric user on a
# distroless base that has glibc, libgcc and CA certificates (for amqps://)
# and nothing else: no shell, no package manager.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in pool e2e hot_paths; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo fetch --locked
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin misiva \
    && cp target/release/misiva /misiva

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="misiva" \
      org.opencontainers.image.description="Delivers Apple push notifications from RabbitMQ" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/misiva/misiva"
COPY --from=build /misiva /usr/local/bin/misiva
# The chart's securityContext runs it as 10001 too; the image does not rely on it.
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/misiva"]
CMD ["run"]
