//! The vocabulary shared by the config, the records and the graded policy:
//! the policy levels (`OK` ... `HARD_ADMIN`), a level with its application
//! count as stored in a record, the actions a level may take, and what is
//! enforced on a user. A leaf: it imports nothing else from this crate, so
//! `config`, `record` and `policy` can all use it without a module cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the controller imposes on the user now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    #[default]
    None,
    /// Writes refused (EDQUOT), deletes allowed; spawning allowed.
    Cleanup,
    /// Server stopped, spawns refused.
    Blocked,
}

/// A level of the graded overquota policy, in escalation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PolicyLevel {
    #[default]
    Ok,
    Overquota,
    SoftUser,
    SoftAdmin,
    HardUser,
    HardAdmin,
}

impl PolicyLevel {
    pub const ALL: [PolicyLevel; 6] = [
        PolicyLevel::Ok,
        PolicyLevel::Overquota,
        PolicyLevel::SoftUser,
        PolicyLevel::SoftAdmin,
        PolicyLevel::HardUser,
        PolicyLevel::HardAdmin,
    ];
    /// The levels a user over quota climbs, in order.
    pub const ESCALATION: [PolicyLevel; 5] = [
        PolicyLevel::Overquota,
        PolicyLevel::SoftUser,
        PolicyLevel::SoftAdmin,
        PolicyLevel::HardUser,
        PolicyLevel::HardAdmin,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyLevel::Ok => "OK",
            PolicyLevel::Overquota => "OVERQUOTA",
            PolicyLevel::SoftUser => "SOFT_USER",
            PolicyLevel::SoftAdmin => "SOFT_ADMIN",
            PolicyLevel::HardUser => "HARD_USER",
            PolicyLevel::HardAdmin => "HARD_ADMIN",
        }
    }

    /// What `enforce` means at this level: soft levels put the home in
    /// cleanup mode, hard levels stop the server and refuse spawns.
    pub fn enforce_strength(&self) -> Enforcement {
        match self {
            PolicyLevel::Ok => Enforcement::None,
            PolicyLevel::Overquota | PolicyLevel::SoftUser | PolicyLevel::SoftAdmin => {
                Enforcement::Cleanup
            }
            PolicyLevel::HardUser | PolicyLevel::HardAdmin => Enforcement::Blocked,
        }
    }
}

impl fmt::Display for PolicyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == up)
            .ok_or_else(|| format!("unknown overquota state {s:?} (one of OK, OVERQUOTA, SOFT_USER, SOFT_ADMIN, HARD_USER, HARD_ADMIN)"))
    }
}

/// A level and how many times it was applied: `SOFT_USER:1`; `OK` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyStatus {
    pub level: PolicyLevel,
    pub applied: u32,
}

impl fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            PolicyLevel::Ok => f.write_str("OK"),
            l => write!(f, "{l}:{}", self.applied),
        }
    }
}

impl FromStr for PolicyStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, n) = match s.split_once(':') {
            Some((l, n)) => (
                l,
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("bad application count in {s:?}"))?,
            ),
            None => (s, 0),
        };
        let level: PolicyLevel = l.parse()?;
        Ok(PolicyStatus { level, applied: n })
    }
}

impl Serialize for PolicyStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PolicyStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a policy level does when it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    InformUser,
    InformAdmin,
    Enforce,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::InformUser => "inform_user",
            Action::InformAdmin => "inform_admin",
            Action::Enforce => "enforce",
        })
    }
}
