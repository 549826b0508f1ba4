//! The `orderpipe` binary: parse the command line, start telemetry, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use orderpipe_ops::cli::{Cli, Command, StockCommand, TopicsCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    orderpipe_runtime::telemetry::init(&cli.log);
    let outcome = match cli.command {
        Command::Run(args) => {
            orderpipe_ops::run::run(args, orderpipe_runtime::shutdown::on_signal()).await
        }
        Command::Stock(StockCommand::Set(args)) => orderpipe_ops::admin::stock_set(args).await,
        Command::Rebuild(args) => orderpipe_ops::admin::rebuild(args).await,
        Command::Replay(args) => {
            orderpipe_ops::replay::replay(args, orderpipe_runtime::shutdown::on_signal()).await
        }
        Command::Switch(args) => orderpipe_ops::replay::switch(args).await,
        Command::GatewaySim(args) => {
            orderpipe_ops::admin::gateway_sim(args, orderpipe_runtime::shutdown::on_signal()).await
        }
        Command::Verify(args) => match orderpipe_ops::admin::verify(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(err) => Err(err),
        },
        Command::Dlq(command) => orderpipe_ops::dlq::dlq(command).await,
        Command::Lag(args) => orderpipe_ops::lag::lag(args).await,
        Command::Topics(TopicsCommand::Create(args)) => orderpipe_ops::topics::create(args).await,
        Command::Topics(TopicsCommand::Describe(args)) => {
            match orderpipe_ops::topics::describe_command(args).await {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(err) => Err(err),
            }
        }
        Command::Stock(StockCommand::Adjust(args)) => orderpipe_ops::stock::adjust(args).await,
        Command::Stock(StockCommand::Show(args)) => orderpipe_ops::stock::show(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace dump.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
