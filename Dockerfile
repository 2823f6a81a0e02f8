# The invoker base image: `invoker serve` on a small glibc runtime (musl cannot dlopen the
# function libraries). A function image adds its library and FUNCTION_URI (see invoker.yaml).
#
#   docker build -t projectriff/rust-function-invoker:0.1.0 .
#
# tests/author.rs (the_runtime_image_files_are_enough) reads this file: the final stage's base
# image, COPY, USER, ENV and ENTRYPOINT, and runs the daemon from just those files.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p invoker

FROM debian:bookworm-slim
# CA certificates, for a function that calls TLS services (unpinned, so that each build takes
# Debian's security updates of them). A fixed non-root user and its group; /tmp (an emptyDir
# under a read-only root) holds the copies of function libraries made at each load.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 invoker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin invoker
COPY --from=build /src/target/release/invoker /usr/local/bin/invoker
USER 10001:10001
ENV HOST=0.0.0.0 \
    GRPC_PORT=10382 \
    METRICS_PORT=9090 \
    GRACE_PERIOD=10
# gRPC, then Prometheus /metrics.
EXPOSE 10382 9090
ENTRYPOINT ["invoker", "serve"]
