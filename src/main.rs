//! `hookgate`: parses the command line and hands over to the library.

use clap::Parser;

fn main() {
    let cli = hookgate::cli::Cli::parse();
    if let Err(e) = hookgate::cli::run(cli) {
        eprintln!("hookgate: {e:#}");
        std::process::exit(2);
    }
}
