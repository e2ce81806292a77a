//! The JupyterHub REST API, behind the `HubApi` trait: list users (with
//! pagination — efs-quota read only the first page of 200), their last
//! activity and servers, and stop a server.
//!
//! Failures are loud: a listing that could not be completed (hub down, a page
//! missing, totals that do not add up) is an error, never a short list, so the
//! controller never takes an enforcement decision on part of the users.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::{header, Method, StatusCode, Url};
use serde::Deserialize;

use crate::config::HubSettings;
use crate::record::RecordTime;

/// The pagination media type of JupyterHub ≥ 2.0.
pub const PAGINATION_ACCEPT: &str = "application/jupyterhub-pagination+json";

#[derive(Debug, Clone, PartialEq)]
pub struct HubUser {
    pub name: String,
    pub last_activity: Option<DateTime<Utc>>,
    /// Names of running (or starting) servers; "" is the default server.
    pub running: Vec<String>,
}

impl HubUser {
    pub fn server_running(&self) -> bool {
        !self.running.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// 204: stopped.
    Stopped,
    /// 202: stop in progress.
    Stopping,
    /// There was nothing to stop.
    NotRunning,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub unreachable: {0}")]
    Unreachable(String),
    #[error("hub answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("hub user listing incomplete: {0}")]
    Incomplete(String),
    #[error("hub reply to {what} not understood: {why}")]
    Decode { what: String, why: String },
    #[error("bad hub URL {0}")]
    BadUrl(String),
}

#[async_trait]
pub trait HubApi: Send + Sync + fmt::Debug {
    /// Every user, or an error: never a partial list.
    async fn list_users(&self) -> Result<Vec<HubUser>, HubError>;
    /// Stops one server of a user ("" = the default server).
    async fn stop_server(&self, user: &str, server: &str) -> Result<StopOutcome, HubError>;
}

/// The service token; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(t: &str) -> Self {
        Token(t.trim().to_string())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, Deserialize)]
struct ServerModel {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    pending: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UserModel {
    name: String,
    #[serde(default)]
    last_activity: Option<String>,
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    pending: Option<String>,
    #[serde(default)]
    servers: Option<BTreeMap<String, ServerModel>>,
}

#[derive(Debug, Deserialize)]
struct NextPage {
    offset: u64,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    next: Option<NextPage>,
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<UserModel>,
    #[serde(rename = "_pagination")]
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UsersReply {
    Paged(Page),
    /// A hub too old to paginate returns everything as a list.
    All(Vec<UserModel>),
}

fn to_user(m: UserModel) -> Result<HubUser, HubError> {
    let last_activity = match m.last_activity.as_deref() {
        None => None,
        Some(s) => RecordTime::parse(s)
            .map_err(|why| HubError::Decode {
                what: format!("last_activity of {}", m.name),
                why,
            })?
            .get(),
    };
    let mut running = Vec::new();
    match &m.servers {
        Some(servers) => {
            for (name, s) in servers {
                if s.ready || s.pending.is_some() {
                    running.push(name.clone());
                }
            }
        }
        None => {
            if m.server.is_some() || m.pending.is_some() {
                running.push(String::new());
            }
        }
    }
    Ok(HubUser {
        name: m.name,
        last_activity,
        running,
    })
}

/// The real client.
#[derive(Debug, Clone)]
pub struct HubClient {
    api: Url,
    token: Token,
    http: reqwest::Client,
    settings: HubSettings,
}

impl HubClient {
    /// `hub_url` is the hub's public or internal base URL
    /// (`http://hub:8081`, with or without `/hub/api`).
    pub fn new(hub_url: &str, token: Token, settings: HubSettings) -> Result<Self, HubError> {
        let mut base = hub_url.trim().trim_end_matches('/').to_string();
        if !base.ends_with("/hub/api") {
            base.push_str("/hub/api");
        }
        base.push('/');
        let api = Url::parse(&base).map_err(|e| HubError::BadUrl(format!("{hub_url}: {e}")))?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(HubError::BadUrl(format!("{hub_url}: not http(s)")));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_seconds))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| HubError::Unreachable(e.to_string()))?;
        Ok(Self {
            api,
            token,
            http,
            settings,
        })
    }

    fn users_url(&self, offset: u64) -> Url {
        let mut u = self.api.clone();
        u.path_segments_mut()
            .map(|mut s| {
                s.pop_if_empty().push("users");
            })
            .ok();
        u.query_pairs_mut()
            .append_pair("offset", &offset.to_string())
            .append_pair("limit", &self.settings.page_size.to_string());
        u
    }

    /// One request with retries on 5xx, 429 and transport errors.
    async fn send(
        &self,
        method: Method,
        url: Url,
        what: &str,
    ) -> Result<(StatusCode, String), HubError> {
        let mut delay = Duration::from_millis(self.settings.backoff_millis);
        let mut attempt = 0;
        loop {
            let req = self
                .http
                .request(method.clone(), url.clone())
                .header(header::AUTHORIZATION, format!("token {}", self.token.0))
                .header(header::ACCEPT, PAGINATION_ACCEPT);
            let retry_after;
            let err = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(30)));
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        HubError::Status {
                            what: what.into(),
                            status: status.as_u16(),
                            body: truncate(&body),
                        }
                    } else {
                        return Ok((status, body));
                    }
                }
                Err(e) => {
                    retry_after = None;
                    HubError::Unreachable(format!("{what}: {e}"))
                }
            };
            if attempt >= self.settings.retries {
                return Err(err);
            }
            attempt += 1;
            let wait = retry_after.unwrap_or(delay);
            tracing::warn!(%what, attempt, error = %err, "hub request failed; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            delay *= 2;
        }
    }

    async fn page(&self, offset: u64) -> Result<UsersReply, HubError> {
        let what = format!("GET users offset {offset}");
        let (status, body) = self
            .send(Method::GET, self.users_url(offset), &what)
            .await?;
        if !status.is_success() {
            return Err(HubError::Status {
                what,
                status: status.as_u16(),
                body: truncate(&body),
            });
        }
        serde_json::from_str(&body).map_err(|e| HubError::Decode {
            what,
            why: e.to_string(),
        })
    }

    /// Follows `next` links one by one.
    async fn list_sequential(&self, first: Page) -> Result<Vec<UserModel>, HubError> {
        let mut out = first.items;
        let mut next = first.pagination.next;
        let mut seen_offsets = HashSet::new();
        while let Some(n) = next {
            if !seen_offsets.insert(n.offset) {
                return Err(HubError::Incomplete(format!(
                    "pagination loops at offset {}",
                    n.offset
                )));
            }
            match self.page(n.offset).await? {
                UsersReply::Paged(p) => {
                    out.extend(p.items);
                    next = p.pagination.next;
                }
                UsersReply::All(_) => {
                    return Err(HubError::Incomplete(
                        "hub stopped paginating mid-listing".into(),
                    ))
                }
            }
        }
        Ok(out)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

#[async_trait]
impl HubApi for HubClient {
    async fn list_users(&self) -> Result<Vec<HubUser>, HubError> {
        let first = match self.page(0).await? {
            UsersReply::All(all) => return all.into_iter().map(to_user).collect(),
            UsersReply::Paged(p) => p,
        };
        let total = first.pagination.total;
        let page_len = first.items.len() as u64;
        let models = match (total, &first.pagination.next) {
            (Some(total), Some(_)) if page_len > 0 => {
                // Fetch the remaining pages a few at a time; if the figures do
                // not add up (users came or went meanwhile), fall back to
                // following `next` links, which the hub guarantees to end.
                let offsets: Vec<u64> = (1..)
                    .map(|i| i * page_len)
                    .take_while(|o| *o < total)
                    .collect();
                let mut pages = Vec::with_capacity(offsets.len());
                for chunk in offsets.chunks(4) {
                    let got = futures::future::join_all(chunk.iter().map(|o| self.page(*o))).await;
                    for g in got {
                        pages.push(g?);
                    }
                }
                let mut all = first.items;
                let mut consistent = true;
                for p in pages {
                    match p {
                        UsersReply::Paged(p) => {
                            consistent &= p.pagination.total == Some(total);
                            all.extend(p.items);
                        }
                        UsersReply::All(_) => consistent = false,
                    }
                }
                let unique: HashSet<&str> = all.iter().map(|u| u.name.as_str()).collect();
                if consistent && all.len() as u64 == total && unique.len() == all.len() {
                    all
                } else {
                    tracing::info!("hub user list changed while listing; re-listing page by page");
                    match self.page(0).await? {
                        UsersReply::Paged(p) => self.list_sequential(p).await?,
                        UsersReply::All(all) => all,
                    }
                }
            }
            _ => self.list_sequential(first).await?,
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            if seen.insert(m.name.clone()) {
                out.push(to_user(m)?);
            }
        }
        Ok(out)
    }

    async fn stop_server(&self, user: &str, server: &str) -> Result<StopOutcome, HubError> {
        let mut url = self.api.clone();
        {
            let mut seg = url
                .path_segments_mut()
                .map_err(|_| HubError::BadUrl(self.api.to_string()))?;
            seg.pop_if_empty().push("users").push(user);
            if server.is_empty() {
                seg.push("server");
            } else {
                seg.push("servers").push(server);
            }
        }
        let what = format!("DELETE server {server:?} of {user}");
        let (status, body) = self.send(Method::DELETE, url, &what).await?;
        match status.as_u16() {
            204 => Ok(StopOutcome::Stopped),
            202 => Ok(StopOutcome::Stopping),
            400 | 404 if body.contains("not running") || body.contains("No such") => {
                Ok(StopOutcome::NotRunning)
            }
            s => Err(HubError::Status {
                what,
                status: s,
                body: truncate(&body),
            }),
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
/// An in-memory hub for unit tests (`test-util` feature).
#[derive(Debug, Default)]
pub struct FakeHub {
    pub users: parking_lot::Mutex<Vec<HubUser>>,
    /// When set, every call fails as if the hub were down.
    pub down: std::sync::atomic::AtomicBool,
    /// Every server stop asked for, as (user, server).
    pub stops: parking_lot::Mutex<Vec<(String, String)>>,
}

#[cfg(any(test, feature = "test-util"))]
impl FakeHub {
    pub fn with_users(users: Vec<HubUser>) -> Self {
        Self {
            users: parking_lot::Mutex::new(users),
            ..Self::default()
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), HubError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(HubError::Unreachable("fake hub is down".into()))
        } else {
            Ok(())
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
#[async_trait]
impl HubApi for FakeHub {
    async fn list_users(&self) -> Result<Vec<HubUser>, HubError> {
        self.check()?;
        Ok(self.users.lock().clone())
    }

    async fn stop_server(&self, user: &str, server: &str) -> Result<StopOutcome, HubError> {
        self.check()?;
        self.stops.lock().push((user.into(), server.into()));
        let mut users = self.users.lock();
        match users.iter_mut().find(|u| u.name == user) {
            Some(u) if u.running.iter().any(|s| s == server) => {
                u.running.retain(|s| s != server);
                Ok(StopOutcome::Stopped)
            }
            _ => Ok(StopOutcome::NotRunning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_never_printed() {
        let t = Token::new("s3cr3t\n");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        let c = HubClient::new("http://127.0.0.1:1", t, HubSettings::default()).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn urls_are_built_and_names_escaped() {
        let c =
            HubClient::new("http://hub:8081/", Token::new("x"), HubSettings::default()).unwrap();
        assert_eq!(
            c.users_url(400).as_str(),
            "http://hub:8081/hub/api/users?offset=400&limit=200"
        );
        let c2 = HubClient::new(
            "http://hub:8081/prefix/hub/api",
            Token::new("x"),
            HubSettings::default(),
        )
        .unwrap();
        assert_eq!(
            c2.users_url(0).as_str(),
            "http://hub:8081/prefix/hub/api/users?offset=0&limit=200"
        );
        assert!(HubClient::new("ftp://x", Token::new("x"), HubSettings::default()).is_err());
    }

    #[test]
    fn user_models_decode_servers_and_activity() {
        let page: UsersReply = serde_json::from_str(
            r#"{"items":[
                {"name":"a","last_activity":"2026-11-22T10:00:00.123456Z","server":null,
                 "servers":{"":{"ready":true,"pending":null},"gpu":{"ready":false,"pending":"spawn"},"old":{"ready":false,"pending":null}}},
                {"name":"b@x.org","last_activity":null,"server":"/user/b/"}
            ],"_pagination":{"offset":0,"limit":2,"total":5,"next":{"offset":2,"limit":2,"url":"x"}}}"#,
        )
        .unwrap();
        let UsersReply::Paged(p) = page else { panic!() };
        assert_eq!(p.pagination.total, Some(5));
        assert_eq!(p.pagination.next.as_ref().unwrap().offset, 2);
        let users: Vec<_> = p.items.into_iter().map(|m| to_user(m).unwrap()).collect();
        assert_eq!(users[0].running, vec!["".to_string(), "gpu".to_string()]);
        assert!(users[0].last_activity.is_some());
        assert_eq!(users[1].running, vec![String::new()]);
        assert!(users[1].last_activity.is_none());
        let bad = UserModel {
            name: "c".into(),
            last_activity: Some("whenever".into()),
            server: None,
            pending: None,
            servers: None,
        };
        assert!(to_user(bad).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_hub_is_an_error_not_an_empty_list() {
        let s = HubSettings {
            retries: 1,
            backoff_millis: 1,
            timeout_seconds: 2,
            ..HubSettings::default()
        };
        // Port 9 (discard) on loopback: nothing listens there.
        let c = HubClient::new("http://127.0.0.1:9", Token::new("x"), s).unwrap();
        assert!(matches!(
            c.list_users().await,
            Err(HubError::Unreachable(_))
        ));
    }
}
