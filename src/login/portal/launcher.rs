//! `GET /` on the portal: the apps the signed-in person may open, each app's policies asked
//! about its root path, as they would be when the link is followed. `launcher: false` hides an
//! app; an app the person may not open is not listed.

use http::{HeaderMap, Response, StatusCode};
use minijinja::context;

use super::super::Flow;
use crate::body::Body;
use crate::policy;

impl Flow<'_> {
    pub(super) fn launcher(&self, headers: &HeaderMap) -> Response<Body> {
        let Ok(c) = self.portal_session(headers) else {
            return self.site.pages.page(
                StatusCode::OK,
                "launcher.html",
                context! { signed_in => false },
            );
        };
        let user = self.user(&c.email);
        let groups = user.as_ref().map_or(&[][..], |u| &u.groups[..]);
        let who = policy::Identity {
            email: &c.email,
            groups,
            login_method: c.method,
        };
        let facts = policy::Request {
            path: "/",
            ip: self.ip,
        };
        let apps: Vec<minijinja::Value> = self
            .site
            .config
            .apps
            .iter()
            .zip(self.site.origins)
            .filter(|(a, _)| a.launcher)
            .filter(|(a, _)| policy::decide(&a.policies, &facts, Some(&who)).permits())
            .map(|(a, o)| context! { name => a.name.as_str(), url => format!("{o}/") })
            .collect();
        self.site.pages.page(
            StatusCode::OK,
            "launcher.html",
            context! {
                signed_in => true, email => c.email.as_str(),
                apps,
            },
        )
    }
}
