//! Questions to the operator before bulk or destructive commands.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;

/// Asks on the terminal; without one, the question is an error naming `--yes` (also used by
/// `orderpipe replay` and `switch`).
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{question} needs confirmation: pass --yes (stdin is not a terminal)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
