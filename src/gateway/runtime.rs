//! Everything derived from one config, ready to serve: the apps with their upstream clients,
//! the router, the audit log and the page templates. Built whole at start and on reload, then
//! swapped in atomically; requests already running finish on the snapshot they started with.

use std::sync::Arc;
use std::time::Duration;

use super::route::Router;
use crate::access::AppAccess;
use crate::audit::{Audit, AuditError};
use crate::config::{AppConfig, BoundAddrs, Config, Origin, Upstream as UpstreamConfig};
use crate::metrics::AppMetrics;
use crate::pages::{Pages, PagesError};
use crate::proxy::{self, Pool, ProxyError, Upstream};
use crate::session;
use crate::session::service_token::ServiceTokens;

/// Problems building a runtime from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream's connection pool could not be set up.
    #[error("app {app}: cannot set up its upstream connections")]
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
    pools: Vec<Arc<Pool>>,
}

impl Runtime {
    /// Builds the snapshot. Connection pools of `previous` are reused where upstream and
    /// settings are the same, so a reload keeps pooled connections.
    pub fn build(
        config: Config,
        bound: &BoundAddrs,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        let mut apps = Vec::with_capacity(config.apps.len());
        for a in &config.apps {
            let upstream = upstream(a, &mut pools, previous.map_or(&[][..], |p| &p.pools))?;
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
                strip: proxy::Strip::new(&config.strip_request_headers, &a.identity_headers)
                    .with_assertion(config.identity_assertion.as_ref().map(|c| &c.header)),
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
            pools,
        })
    }

    /// The app serving `host` (normalised).
    pub fn app_for(&self, host: &str) -> Option<&App> {
        self.router.find(host).map(|i| &self.apps[i])
    }
}

/// An app's upstream, sharing a pool with every app that has the same upstream and settings
/// (in this snapshot or, across a reload, in the previous one).
fn upstream(
    a: &AppConfig,
    pools: &mut Vec<Arc<Pool>>,
    previous: &[Arc<Pool>],
) -> Result<Upstream, BuildError> {
    let (https, authority) = match &a.upstream {
        UpstreamConfig::Echo => return Ok(Upstream::Echo),
        UpstreamConfig::Http { https, authority } => (*https, authority),
    };
    let same = |p: &&Arc<Pool>| p.serves(https, authority, a.upstream_protocol, &a.upstream_ca);
    if let Some(p) = pools.iter().find(same) {
        return Ok(Upstream::Http(p.clone()));
    }
    let pool = match previous.iter().find(same) {
        Some(p) => p.clone(),
        None => Pool::new(
            https,
            authority.clone(),
            a.upstream_protocol,
            a.upstream_ca.clone(),
        )
        .map(Arc::new)
        .map_err(|source| BuildError::Client {
            app: a.name.clone(),
            source,
        })?,
    };
    pools.push(pool.clone());
    Ok(Upstream::Http(pool))
}
