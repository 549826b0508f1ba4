//! Files generated from the code and committed (OpenAPI documents): a test compares the committed
//! copy with what the code generates now, and rewrites it when asked to.

use std::path::Path;

/// Fails when the file at `path` differs from `generated`, saying how to regenerate it; with the
/// environment variable `update_var` set to `1`, writes `generated` there instead (and passes).
pub fn assert_committed(path: &Path, generated: &str, update_var: &str, regenerate: &str) {
    if std::env::var(update_var).as_deref() == Ok("1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is stale (first difference at line {}); regenerate it with:\n    {regenerate}\nand commit it",
            path.display(),
            line + 1
        );
    }
}
