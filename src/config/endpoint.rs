//! Where an app's requests go: Apple's hosts by name, or any URL (the
//! simulator, a proxy), checked at load.

/// Where an app's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Production,
    Sandbox,
    /// Anything else speaking APNs over HTTP/2 + TLS: the simulator, a proxy.
    Custom {
        host: String,
        port: u16,
    },
}

impl Endpoint {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "production" => return Ok(Endpoint::Production),
            "sandbox" | "development" => return Ok(Endpoint::Sandbox),
            _ => {}
        }
        let rest = raw
            .strip_prefix("https://")
            .ok_or("expected production, sandbox or https://host:port")?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
                (host, port)
            }
            _ => (rest, 443),
        };
        if host.is_empty() || host.contains('/') {
            return Err("expected https://host:port without a path".into());
        }
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // The host must work both as a TLS server name and inside a request
        // URI; checked here, so that no request can fail to build later.
        if !valid_host(host) {
            return Err(format!(
                "{} is not a valid host name or IP address",
                crate::bounded::quote(host)
            ));
        }
        if host.contains(':') && !bracketed {
            return Err("an IPv6 address must be written in brackets: https://[::1]:443".into());
        }
        let endpoint = Endpoint::Custom {
            host: host.to_owned(),
            port,
        };
        if endpoint
            .authority()
            .parse::<http::uri::Authority>()
            .is_err()
        {
            return Err(format!(
                "{} cannot be used in a request URI",
                crate::bounded::quote(host)
            ));
        }
        Ok(endpoint)
    }

    /// `host:port` as a request URI carries it (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        let host = self.host();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match self.port() {
            443 => host,
            port => format!("{host}:{port}"),
        }
    }

    /// The endpoint of channel management (CONTRACT §7): `production` and
    /// `sandbox` name Apple's management hosts and ports, anything else is a
    /// URL as for [`Endpoint::parse`].
    pub fn parse_channels(raw: &str) -> Result<Self, String> {
        let apple = |host: &str, port| Endpoint::Custom {
            host: host.to_owned(),
            port,
        };
        match raw {
            "production" => Ok(apple("api-manage-broadcast.push.apple.com", 2196)),
            "sandbox" | "development" => {
                Ok(apple("api-manage-broadcast.sandbox.push.apple.com", 2195))
            }
            _ => Endpoint::parse(raw),
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Endpoint::Production => "api.push.apple.com",
            Endpoint::Sandbox => "api.sandbox.push.apple.com",
            Endpoint::Custom { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Custom { port, .. } => *port,
            _ => 443,
        }
    }
}

/// A DNS name (labels of letters, digits and inner hyphens, 253 bytes at
/// most) or an IP address: what TLS can verify and a URI can carry.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}
