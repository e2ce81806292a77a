//! Per-volume S3 credentials, as a CSI `nodePublishSecretRef` carries them.
//!
//! A cluster mounts a public bucket (anonymous), a course bucket and a private
//! research bucket side by side, each with its own identity. The node plugin
//! gets a volume's secret (keys [`ACCESS_KEY_ID`], [`SECRET_ACCESS_KEY`],
//! optional [`SESSION_TOKEN`]) and hands it to the mount as `key=value`
//! lines in a file or an inherited pipe (`hubfs mount s3 --credentials-file
//! /dev/fd/N`): never on a command line, never in mount options, never in
//! a log line. [`StaticCredentials`]'s `Debug` shows only the first four
//! characters of the key id, and parse errors name the line, not its text.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

/// The secret key holding the access key id.
pub const ACCESS_KEY_ID: &str = "accessKeyID";
/// The secret key holding the secret access key.
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// The secret key holding a session token (temporary credentials), optional.
pub const SESSION_TOKEN: &str = "sessionToken";

/// An access key pair, with a session token for temporary credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &format_args!("{id}…"))
            .finish_non_exhaustive()
    }
}

/// Why credentials could not be read. Never contains a credential.
#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("cannot read credentials from {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials line {0} is not `key=value`")]
    Syntax(usize),
    #[error(
        "unknown credentials key on line {0} (expected accessKeyID, secretAccessKey, sessionToken)"
    )]
    UnknownKey(usize),
    #[error("credentials lack {0}")]
    Missing(&'static str),
    #[error("credentials value of {0} is empty")]
    Empty(&'static str),
    #[error("credentials value of {0} contains a NUL, a line break or another control character")]
    Malformed(&'static str),
}

impl StaticCredentials {
    /// From a volume's secret as the CSI node service receives it. `None`
    /// for an empty secret (the default chain, or anonymous if asked).
    /// Values are trimmed (a secret made from a file often ends in a line
    /// break); other keys of the secret are ignored. Errors name the key,
    /// never the value.
    pub fn from_secret(secret: &HashMap<String, String>) -> Result<Option<Self>, CredentialsError> {
        if secret.is_empty() {
            return Ok(None);
        }
        let get = |k: &'static str| -> Result<Option<String>, CredentialsError> {
            let Some(v) = secret.get(k) else {
                return Ok(None);
            };
            let v = v.trim();
            if v.is_empty() {
                return Err(CredentialsError::Empty(k));
            }
            if v.chars().any(char::is_control) {
                return Err(CredentialsError::Malformed(k));
            }
            Ok(Some(v.to_owned()))
        };
        let need = |k: &'static str| get(k)?.ok_or(CredentialsError::Missing(k));
        Ok(Some(Self {
            access_key_id: need(ACCESS_KEY_ID)?,
            secret_access_key: need(SECRET_ACCESS_KEY)?,
            session_token: get(SESSION_TOKEN)?,
        }))
    }

    /// Parses `key=value` lines (blank lines and `#` comments ignored).
    pub fn parse(text: &str) -> Result<Self, CredentialsError> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or(CredentialsError::Syntax(i + 1))?;
            let k = k.trim();
            if ![ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN].contains(&k) {
                return Err(CredentialsError::UnknownKey(i + 1));
            }
            map.insert(k.to_string(), v.trim().to_string());
        }
        Self::from_secret(&map)?.ok_or(CredentialsError::Missing(ACCESS_KEY_ID))
    }

    /// Reads them from a file, or from an inherited pipe as `/dev/fd/N`.
    pub fn read_file(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The text [`StaticCredentials::parse`] reads: what a node plugin
    /// writes into the pipe of a mount it starts.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "{ACCESS_KEY_ID}={}\n{SECRET_ACCESS_KEY}={}\n",
            self.access_key_id, self.secret_access_key
        );
        if let Some(token) = &self.session_token {
            t.push_str(&format!("{SESSION_TOKEN}={token}\n"));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

    fn creds() -> StaticCredentials {
        StaticCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: SECRET.into(),
            session_token: Some(TOKEN.into()),
        }
    }

    #[test]
    fn the_text_form_round_trips_and_files_and_pipes_are_read() {
        let c = creds();
        assert_eq!(StaticCredentials::parse(&c.to_text()).unwrap(), c);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, format!("# volume pv-1\n\n{}", c.to_text())).unwrap();
        assert_eq!(StaticCredentials::read_file(&path).unwrap(), c);
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, c.to_text().as_bytes()).unwrap();
        drop(w);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let from_pipe = StaticCredentials::read_file(Path::new(&format!("/dev/fd/{fd}"))).unwrap();
        assert_eq!(from_pipe, c);
    }

    #[test]
    fn secrets_map_like_the_csi_secret_and_a_missing_key_is_named() {
        let mut m = HashMap::new();
        assert_eq!(StaticCredentials::from_secret(&m).unwrap(), None);
        m.insert(ACCESS_KEY_ID.to_string(), "AKIA".to_string());
        assert!(matches!(
            StaticCredentials::from_secret(&m),
            Err(CredentialsError::Missing(SECRET_ACCESS_KEY))
        ));
        m.insert(SECRET_ACCESS_KEY.to_string(), SECRET.to_string());
        let c = StaticCredentials::from_secret(&m).unwrap().unwrap();
        assert_eq!(c.session_token, None);
        // Made from files: trailing line breaks are not part of the key.
        m.insert(SECRET_ACCESS_KEY.to_string(), format!("{SECRET}\n"));
        m.insert("region".to_string(), "ignored".to_string());
        let c = StaticCredentials::from_secret(&m).unwrap().unwrap();
        assert_eq!(c.secret_access_key, SECRET);
        for (key, bad, want) in [
            (SECRET_ACCESS_KEY, "", "secretAccessKey is empty"),
            (ACCESS_KEY_ID, " \n", "accessKeyID is empty"),
            (
                SECRET_ACCESS_KEY,
                "wJal\0rXU",
                "secretAccessKey contains a NUL",
            ),
            (
                SESSION_TOKEN,
                "Fwo\nsecretAccessKey=x",
                "sessionToken contains a NUL",
            ),
        ] {
            let mut m = m.clone();
            m.insert(key.to_string(), bad.to_string());
            let e = StaticCredentials::from_secret(&m).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("wJal") && !e.contains("Fwo"), "{e}");
        }
    }

    #[test]
    fn credentials_never_appear_in_debug_output_or_errors() {
        let c = creds();
        let shown = format!(
            "{c:?} {:?}",
            crate::s3::s3client::S3Config {
                credentials: Some(c.clone()),
                ..Default::default()
            }
        );
        for secret in [SECRET, TOKEN, "AKIAIOSFODNN7EXAMPLE"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("AKIA…"));
        // Malformed input is reported by line number, never echoed.
        for bad in [
            format!("{SECRET}\n"),
            format!("{SECRET}={TOKEN}\n"),
            format!("{SECRET_ACCESS_KEY}={SECRET}\n"),
        ] {
            let e = StaticCredentials::parse(&bad).unwrap_err().to_string();
            assert!(!e.contains(SECRET) && !e.contains(TOKEN), "{e}");
        }
    }
}
