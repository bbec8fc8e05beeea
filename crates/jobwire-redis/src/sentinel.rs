//! Redis behind Sentinel: `redis+sentinel://` URLs and asking the
//! sentinels where the master is.
//!
//! redis-rs resolves a master once and then stays on that address (it does
//! not follow a failover, redis-rs #1438), so `Connections` asks again every
//! second and moves its connections when the answer changes (see
//! `connection.rs`).

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, TlsCertificates, TlsMode};

/// Sentinel's default port.
const SENTINEL_PORT: u16 = 26379;

/// A parsed `redis+sentinel://[user[:password]@]host[:port],…/master[/db]`
/// (or `rediss+sentinel://`, TLS to the sentinels and to the master). The
/// credentials are the master's; the sentinels are asked without any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) master: String,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls: bool,
}

/// Whether `url` names Sentinel rather than one Redis.
pub(crate) fn is_sentinel(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

impl SentinelUrl {
    pub(crate) fn parse(url: &str) -> Result<SentinelUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err("not a redis+sentinel:// URL".to_owned());
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    (!user.is_empty()).then(|| user.to_owned()),
                    Some(password.to_owned()),
                ),
                // As for redis://secret@host: taken as a password.
                None => (None, Some(info.to_owned())),
            },
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| format!("bad port in sentinel address {host:?}"))?,
                ),
                None => (host, SENTINEL_PORT),
            };
            if name.is_empty() {
                return Err("a sentinel address has no host".to_owned());
            }
            sentinels.push((name.to_owned(), port));
        }
        let mut segments = path.split('/');
        let master = segments.next().unwrap_or_default();
        if master.is_empty() {
            return Err("the master's name is missing (…/NAME after the sentinels)".to_owned());
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse()
                .map_err(|_| format!("bad database number {db:?}"))?,
        };
        Ok(SentinelUrl {
            sentinels,
            master: master.to_owned(),
            db,
            username,
            password,
            tls,
        })
    }

    /// A client of redis-rs that asks these sentinels for the master.
    pub(crate) fn client(
        &self,
        certificates: Option<TlsCertificates>,
    ) -> Result<SentinelClient, redis::RedisError> {
        let addrs = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

/// The master's address as redis-rs's client for it knows it.
pub(crate) fn address(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_master_db_and_credentials() {
        let url = SentinelUrl::parse("redis+sentinel://:pw@a:1,b/mymaster/2").expect("valid");
        assert_eq!(
            url.sentinels,
            [("a".to_owned(), 1), ("b".to_owned(), 26379)]
        );
        assert_eq!(url.master, "mymaster");
        assert_eq!(url.db, 2);
        assert_eq!(url.password.as_deref(), Some("pw"));
        assert_eq!(url.username, None);
        assert!(!url.tls);
        let url = SentinelUrl::parse("rediss+sentinel://u:p@h:26380/m").expect("valid");
        assert!(url.tls);
        assert_eq!(url.username.as_deref(), Some("u"));
        assert_eq!(url.db, 0);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:x/m",
            "redis+sentinel://,h/m",
            "redis+sentinel://h/m/x",
            "redis://h/m",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
