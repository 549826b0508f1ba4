//! `cql-adapter --listen 127.0.0.1:9042 --upstream 127.0.0.1:9142`: CQL protocol v4 clients on
//! `listen`, Cassandra 2.1 (protocol v3) at `upstream`.

use clap::Parser;
use std::io::IsTerminal;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "CQL protocol v4 -> v3 adapter in front of Cassandra 2.1"
)]
struct Args {
    /// Address clients connect to.
    #[arg(long, env = "CQL_ADAPTER_LISTEN", default_value = "127.0.0.1:9042")]
    listen: SocketAddr,
    /// Cassandra's native transport (protocol v3).
    #[arg(long, env = "CQL_ADAPTER_UPSTREAM", default_value = "127.0.0.1:9142")]
    upstream: String,
    /// Reported as system.local.cluster_name.
    #[arg(
        long,
        env = "CQL_ADAPTER_CLUSTER_NAME",
        default_value = "orderpipe-testbed"
    )]
    cluster_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Plain text when logging to a file (the testbed), colours on a terminal.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, upstream = %args.upstream, "cql-adapter listening");
    cql_adapter::proxy::serve(listener, args.upstream, args.cluster_name).await?;
    Ok(())
}
