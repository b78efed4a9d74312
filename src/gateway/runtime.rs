//! Everything derived from one config, ready to serve: the apps with their upstream clients,
//! the router, the audit log and the page templates. Built whole at start and on reload, then
//! swapped in atomically; requests already running finish on the snapshot they started with.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::route::Router;
use crate::access::AppAccess;
use crate::audit::{Audit, AuditError};
use crate::config::{AppConfig, BoundAddrs, Config, Origin, Upstream as UpstreamConfig};
use crate::metrics::AppMetrics;
use crate::pages::{Pages, PagesError};
use crate::proxy::{self, ProxyError, Upstream, UpstreamClient};
use crate::session;
use crate::session::service_token::ServiceTokens;

/// Problems building a runtime from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream client could not be set up.
    #[error("app {app}: cannot set up its upstream client")]
    Client {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: ProxyError,
    },
    /// The audit log could not be opened.
    #[error("cannot open the audit log")]
    Audit(#[from] AuditError),
    /// A page template is broken.
    #[error("cannot load the page templates")]
    Pages(#[from] PagesError),
}

/// One app, ready to serve.
#[derive(Debug)]
pub struct App {
    /// Its configuration.
    pub config: AppConfig,
    /// The origin users see.
    pub origin: Origin,
    /// Where requests go.
    pub upstream: Upstream,
    /// Metric handles.
    pub metrics: Arc<AppMetrics>,
    /// The gateway cookie's name on this app (`__Host-otpgate` on https origins).
    pub cookie_name: &'static str,
    /// Session lifetime on this app.
    pub session_lifetime: Duration,
    /// The `iss` of its identity assertions: the portal's origin when there is a portal, else
    /// the app's.
    pub issuer: String,
    /// Request headers no client may send it (docs/security.md#40).
    pub strip: proxy::Strip,
}

impl App {
    /// What the policy stage needs to know about this app.
    pub(crate) fn access(&self) -> AppAccess<'_> {
        AppAccess {
            name: &self.config.name,
            policies: &self.config.policies,
            cookie_name: self.cookie_name,
            https: self.origin.https,
            issuer: &self.issuer,
            audience: &self.config.audience,
            metrics: &self.metrics,
        }
    }
}

/// Upstream clients by the extra trust anchors they were built with.
type Clients = Vec<(Vec<CertificateDer<'static>>, Arc<UpstreamClient>)>;

/// An immutable snapshot of everything config-derived; replaced as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Apps in config order.
    pub apps: Vec<App>,
    /// Every app's origin (the allowed return targets).
    pub origins: Vec<Origin>,
    /// The audit log.
    pub audit: Audit,
    /// Page and mail templates.
    pub pages: Arc<Pages>,
    /// Service tokens, ready to check (their audit timestamps start afresh on reload).
    pub service_tokens: ServiceTokens,
    pub(super) router: Router,
    clients: Clients,
}

impl Runtime {
    /// Builds the snapshot. Upstream clients of `previous` are reused where the trust settings
    /// are the same, so a reload keeps pooled connections.
    pub fn build(
        config: Config,
        bound: &BoundAddrs,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let mut clients: Clients = Vec::new();
        let mut apps = Vec::with_capacity(config.apps.len());
        for a in &config.apps {
            let upstream = upstream(a, &mut clients, previous.map_or(&[][..], |p| &p.clients))?;
            let origin = a.origin(bound);
            apps.push(App {
                cookie_name: session::cookie_name(origin.https),
                session_lifetime: a.session_duration.unwrap_or(config.session.duration),
                // With a portal, every assertion is issued by the portal: one issuer for the
                // whole single sign-on domain.
                issuer: config
                    .portal
                    .as_ref()
                    .map_or_else(|| origin.to_string(), ToString::to_string),
                strip: proxy::Strip::new(&config.strip_request_headers, &a.identity_headers),
                origin,
                config: a.clone(),
                upstream,
                metrics: AppMetrics::new(&a.name),
            });
        }
        let router = Router::new(apps.iter().map(|a| a.config.hosts.as_slice()))
            .with_portal(config.portal.as_ref().map(|p| p.host.as_str()));
        let origins = apps.iter().map(|a| a.origin.clone()).collect();
        let audit = Audit::open(&config.audit)?;
        let pages = Arc::new(Pages::load(config.templates_dir.as_deref())?);
        let service_tokens = ServiceTokens::build(&config.service_tokens);
        Ok(Self {
            service_tokens,
            config: Arc::new(config),
            apps,
            origins,
            audit,
            pages,
            router,
            clients,
        })
    }

    /// The app serving `host` (normalised).
    pub fn app_for(&self, host: &str) -> Option<&App> {
        self.router.find(host).map(|i| &self.apps[i])
    }
}

/// An app's upstream, sharing a client with every app that trusts the same anchors (in this
/// snapshot or, across a reload, in the previous one).
fn upstream(
    a: &AppConfig,
    clients: &mut Clients,
    previous: &[(Vec<CertificateDer<'static>>, Arc<UpstreamClient>)],
) -> Result<Upstream, BuildError> {
    let (https, authority) = match &a.upstream {
        UpstreamConfig::Echo => return Ok(Upstream::Echo),
        UpstreamConfig::Http { https, authority } => (*https, authority),
    };
    let existing = clients
        .iter()
        .chain(previous)
        .find(|(ca, _)| *ca == a.upstream_ca)
        .map(|(_, c)| c.clone());
    let client = match existing {
        Some(c) => c,
        None => proxy::client::build(&a.upstream_ca)
            .map(Arc::new)
            .map_err(|source| BuildError::Client {
                app: a.name.clone(),
                source,
            })?,
    };
    if !clients.iter().any(|(ca, _)| *ca == a.upstream_ca) {
        clients.push((a.upstream_ca.clone(), client.clone()));
    }
    let scheme = if https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    Ok(Upstream::Http {
        client,
        scheme,
        authority: authority.clone(),
    })
}
