//! The gateway's own pages and mail texts: minijinja templates built into the binary, each of
//! which an operator can replace by putting a file of the same name into `templates_dir`
//! (branding). HTML templates are auto-escaped. Every page carries the security headers of
//! docs/product.md#s4; the CSP admits exactly the one stylesheet, by hash, and no script at all.

use std::path::Path;

use base64::Engine as _;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Response, StatusCode};
use minijinja::{Environment, Value, context};

use crate::body::Body;

/// The built-in templates, by name.
pub(crate) const BUILT_IN: &[(&str, &str)] = &[
    ("style.css", include_str!("templates/style.css")),
    ("base.html", include_str!("templates/base.html")),
    ("error.html", include_str!("templates/error.html")),
    ("login.html", include_str!("templates/login.html")),
    ("code.html", include_str!("templates/code.html")),
    ("logout.html", include_str!("templates/logout.html")),
    ("signed_out.html", include_str!("templates/signed_out.html")),
    ("launcher.html", include_str!("templates/launcher.html")),
    (
        "portal_denied.html",
        include_str!("templates/portal_denied.html"),
    ),
    ("pin_subject.txt", include_str!("templates/pin_subject.txt")),
    ("pin.txt", include_str!("templates/pin.txt")),
    ("pin.html", include_str!("templates/pin.html")),
    ("sent.html", include_str!("templates/sent.html")),
    (
        "link_confirm.html",
        include_str!("templates/link_confirm.html"),
    ),
    ("password.html", include_str!("templates/password.html")),
    (
        "link_subject.txt",
        include_str!("templates/link_subject.txt"),
    ),
    ("link.txt", include_str!("templates/link.txt")),
    ("link.html", include_str!("templates/link.html")),
    (
        "token_subject.txt",
        include_str!("templates/token_subject.txt"),
    ),
    ("token.txt", include_str!("templates/token.txt")),
    ("token.html", include_str!("templates/token.html")),
    (
        "password_changed_subject.txt",
        include_str!("templates/password_changed_subject.txt"),
    ),
    (
        "password_changed.txt",
        include_str!("templates/password_changed.txt"),
    ),
];

/// Template problems, found when the templates are loaded.
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    /// An override file could not be read.
    #[error("template {name}: {source}")]
    Read {
        /// The template.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A template does not parse or render.
    #[error("template {name}: {message}")]
    Template {
        /// The template.
        name: String,
        /// What minijinja said.
        message: String,
    },
}

/// The loaded templates.
#[derive(Debug)]
pub struct Pages {
    env: Environment<'static>,
    style: Value,
    csp: HeaderValue,
}

impl Pages {
    /// The built-in templates, with files from `dir` replacing those of the same name.
    pub fn load(dir: Option<&Path>) -> Result<Self, PagesError> {
        let mut env = Environment::new();
        for (name, source) in BUILT_IN {
            let text = match dir.map(|d| d.join(name)) {
                Some(p) if p.is_file() => {
                    std::fs::read_to_string(&p).map_err(|source| PagesError::Read {
                        name: (*name).to_owned(),
                        source,
                    })?
                }
                _ => (*source).to_owned(),
            };
            env.add_template_owned(*name, text)
                .map_err(|e| PagesError::Template {
                    name: (*name).to_owned(),
                    message: e.to_string(),
                })?;
        }
        let style_text = render_with(&env, "style.css", context! {})?;
        let digest = ring::digest::digest(&ring::digest::SHA256, style_text.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let csp = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        ))
        .map_err(|e| PagesError::Template { name: "style.css".into(), message: e.to_string() })?;
        let pages = Self {
            env,
            style: Value::from_safe_string(style_text),
            csp,
        };
        pages.check()?;
        Ok(pages)
    }

    /// Renders every template once with sample values, so a broken override is reported at
    /// load time (check-config, reload) instead of at a login.
    fn check(&self) -> Result<(), PagesError> {
        let sample = context! {
            app => "app", title => "Title", message => "Message", csrf => "t", email => "a@b.example",
            error => "Error", minutes => 10, length => 6, code => "123456", signed_in => true, rd => "https://app.example/",
            offer_pin => true, offer_link => true, offer_token => true, pw_email => "a@b.example", pw_error => "Error",
            method => "token", hours => 24, valid => true, t => "k.t", link => "https://app.example/.otpgate/link?t=k.t",
            password => "abcd-efgh-jkmn-pqrs", login_url => "https://app.example/.otpgate/login", min_length => 12,
            when => "2026-01-01T00:00:00Z",
        };
        for (name, _) in BUILT_IN {
            self.render(name, sample.clone())?;
        }
        Ok(())
    }

    /// Renders a template; page templates also get the stylesheet as `style`.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, PagesError> {
        let ctx = context! { style => self.style.clone(), ..ctx };
        render_with(&self.env, name, ctx)
    }

    /// The security headers of every gateway page.
    pub fn security_headers(&self, h: &mut HeaderMap) {
        h.insert(CONTENT_SECURITY_POLICY, self.csp.clone());
        static_headers(h);
    }

    /// An HTML page from a template. A template that fails to render (an operator's override)
    /// gives a plain error page, logged.
    pub fn page(&self, status: StatusCode, name: &str, ctx: Value) -> Response<Body> {
        match self.render(name, ctx) {
            Ok(html) => {
                let mut r = Response::new(Body::full(html));
                *r.status_mut() = status;
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                self.security_headers(r.headers_mut());
                r
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot render a page");
                fallback(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Please try again later.",
                )
            }
        }
    }

    /// An error page.
    pub fn error(&self, status: StatusCode, title: &str, message: &str) -> Response<Body> {
        self.page(status, "error.html", context! { title, message })
    }

    /// A JSON answer with the security headers.
    pub fn json(&self, status: StatusCode, value: &serde_json::Value) -> Response<Body> {
        let mut r = Response::new(Body::full(value.to_string()));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.security_headers(r.headers_mut());
        r
    }
}

fn render_with(env: &Environment<'static>, name: &str, ctx: Value) -> Result<String, PagesError> {
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| PagesError::Template {
            name: name.to_owned(),
            message: format!("{e:#}"),
        })
}

/// Headers every gateway response carries besides the CSP.
pub(crate) fn static_headers(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page without templates (the built-in echo app, and the last resort when an operator's
/// template fails): no stylesheet, `default-src 'none'`.
pub(crate) fn fallback_html(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title></head>\
         <body>{body_html}</body></html>",
        escape(title)
    );
    let mut r = Response::new(Body::full(doc));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    static_headers(r.headers_mut());
    r
}

fn fallback(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    fallback_html(
        status,
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn pages_carry_security_headers_and_the_style_hash() {
        let p = Pages::load(None).unwrap();
        let r = p.error(
            StatusCode::NOT_FOUND,
            "Not found",
            "<script>alert(1)</script>",
        );
        let h = r.headers();
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("style-src 'sha256-") && csp.starts_with("default-src 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline") && !csp.contains("script-src"));
    }

    #[test]
    fn html_is_escaped_and_the_inline_style_matches_its_hash() {
        let p = Pages::load(None).unwrap();
        let html = p
            .render(
                "error.html",
                context! { title => "T", message => "<script>x</script>" },
            )
            .unwrap();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        let style = html
            .split("<style>")
            .nth(1)
            .unwrap()
            .split("</style>")
            .next()
            .unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        assert!(
            p.csp.to_str().unwrap().contains(&hash),
            "the CSP allows the style actually sent"
        );
    }

    #[test]
    fn operators_can_override_templates_and_broken_ones_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("style.css"), "body{color:teal}").unwrap();
        std::fs::write(
            dir.path().join("error.html"),
            "{% extends \"base.html\" %}{% block content %}ACME: {{ title }}{% endblock %}",
        )
        .unwrap();
        let p = Pages::load(Some(dir.path())).unwrap();
        let html = p
            .render("error.html", context! { title => "Oops" })
            .unwrap();
        assert!(html.contains("ACME: Oops") && html.contains("body{color:teal}"));
        std::fs::write(dir.path().join("login.html"), "{% if %}").unwrap();
        let e = Pages::load(Some(dir.path())).unwrap_err();
        assert!(e.to_string().starts_with("template login.html:"), "{e}");
    }
}
