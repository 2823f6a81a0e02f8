//! The fast tier: the server started inside the test process (`invoker::server::in_process`),
//! with the same arguments as `invoker serve`, and the same clients as [`super::Daemon`].

use invoker::cli::{Cli, Command};
use invoker::proto::function::message_function_client::MessageFunctionClient;
use invoker::server::in_process::InProcess;
use tonic::transport::Channel;

/// An in-process server on a free port of 127.0.0.1; dropping it starts its drain.
pub struct Server {
    pub server: InProcess,
    pub addr: String,
}

impl Server {
    /// Serves `FUNCTION_URI=uri` as `invoker serve` would.
    pub fn start(uri: &str) -> Server {
        Self::start_with(uri, &[])
    }

    /// As [`Server::start`], with more of `invoker serve`'s flags (`--max-calls 1`).
    pub fn start_with(uri: &str, flags: &[&str]) -> Server {
        let argv = [
            "invoker",
            "serve",
            "--function-uri",
            uri,
            "--host",
            "127.0.0.1",
        ];
        let argv = argv.iter().chain(&["--port", "0"]).chain(flags);
        let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed as serve")
        };
        let server = InProcess::start(args).unwrap_or_else(|e| panic!("cannot serve: {e:#}"));
        let addr = server.addr().to_string();
        Server { server, addr }
    }

    /// A gRPC client connected to the server.
    pub async fn client(&self) -> MessageFunctionClient<Channel> {
        MessageFunctionClient::new(self.channel().await)
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }
}
