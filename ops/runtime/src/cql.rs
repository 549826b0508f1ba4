//! The CQL login every session of the pipeline opens with (`--cql-username`,
//! `--cql-password-file`): read once at start, carried in the crates' configs to their
//! `SessionBuilder::user`. The password comes from a file, so it is never on a command line, and
//! `Debug` never shows it.

use std::path::{Path, PathBuf};

/// Why the CQL credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The password file could not be read: fix the path or its permissions, then restart.
    #[error("reading the CQL password file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file holds nothing (a secret not mounted yet?): refused rather than sent.
    #[error("the CQL password file {path} is empty")]
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
    /// An empty user name: give a real one, or no `--cql-username` at all.
    #[error("the CQL username is empty")]
    EmptyUsername,
}

/// A CQL user name and password (PasswordAuthenticator).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    // Configs holding these are debug-printed; the password must not be.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// `username` with the password stored in `password_file` (its trailing line break, as an
    /// editor or `echo` leaves it, is not part of the password).
    pub fn read(username: &str, password_file: &Path) -> Result<Self, CredentialsError> {
        if username.trim().is_empty() {
            return Err(CredentialsError::EmptyUsername);
        }
        let text =
            std::fs::read_to_string(password_file).map_err(|source| CredentialsError::File {
                path: password_file.to_owned(),
                source,
            })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(CredentialsError::EmptyPassword {
                path: password_file.to_owned(),
            });
        }
        Ok(Self {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password (hand it to the driver only).
    pub fn password(&self) -> &str {
        &self.password
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_file(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "orderpipe-cql-password-{name}-{}",
            std::process::id()
        ));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn the_password_is_the_file_without_its_line_break() {
        let path = password_file("ok", "s3cret pass\n");
        let credentials = Credentials::read("orderpipe", &path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(credentials.username(), "orderpipe");
        assert_eq!(credentials.password(), "s3cret pass");
    }

    #[test]
    fn missing_and_empty_files_are_refused() {
        let missing = Credentials::read("orderpipe", Path::new("/nonexistent/cql-password"));
        let err = missing.unwrap_err();
        assert!(matches!(err, CredentialsError::File { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/cql-password"),
            "{err}"
        );

        let path = password_file("empty", "\n");
        let empty = Credentials::read("orderpipe", &path);
        std::fs::remove_file(&path).unwrap();
        let err = empty.unwrap_err();
        assert!(
            matches!(err, CredentialsError::EmptyPassword { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("is empty"), "{err}");

        let path = password_file("nouser", "s3cret");
        let nobody = Credentials::read(" ", &path);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(nobody, Err(CredentialsError::EmptyUsername)));
    }

    #[test]
    fn debug_shows_the_username_and_not_the_password() {
        let path = password_file("debug", "hunter2-cql-pw");
        let credentials = Credentials::read("orderpipe", &path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let printed = format!("{credentials:?} {:?}", Some(credentials.clone()));
        assert!(printed.contains("orderpipe"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
