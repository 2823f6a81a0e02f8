# The invoker base image: `invoker serve` on a small glibc runtime (musl cannot dlopen the
# function libraries). A function image adds its library and FUNCTION_URI (see invoker.yaml).
#
#   docker build -t projectriff/rust-function-invoker:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p invoker \
    && install -D -m 0755 target/release/invoker /out/usr/local/bin/invoker

FROM debian:bookworm-slim
COPY --from=build /out/ /
# A fixed non-root user; /tmp (an emptyDir under a read-only root) holds the copies of
# function libraries made at each load.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin invoker
USER 10001:10001
ENV HOST=0.0.0.0 \
    GRPC_PORT=10382 \
    GRACE_PERIOD=10
EXPOSE 10382
ENTRYPOINT ["invoker", "serve"]
