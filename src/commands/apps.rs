//! `otpgate apps list`: every app with its hosts, public origin, assertion audience and whether
//! the portal's launcher lists it.

use super::CommandError;
use crate::config::{BoundAddrs, Config};

/// One line per app, then the portal (when there is one).
pub fn apps_list(config: &Config) -> Result<String, CommandError> {
    let bound = BoundAddrs {
        http: config.listen.http,
        https: config.listen.https,
        admin: config.listen.admin,
    };
    let mut out = String::new();
    for a in &config.apps {
        let hosts: Vec<String> = a.hosts.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "{}  hosts {}  origin {}  audience {}  launcher {}\n",
            a.name,
            hosts.join(","),
            a.origin(&bound),
            a.audience,
            if a.launcher { "yes" } else { "no" },
        ));
    }
    match &config.portal {
        Some(p) => out.push_str(&format!("portal {p} (assertions are issued by it)\n")),
        None => out.push_str("no portal: each app has its own login\n"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hosts_audience_launcher_and_the_portal() {
        let yaml = "version: 1
listen: { http: 127.0.0.1:8080 }
portal_url: http://auth.localhost:8080
apps:
  - name: wiki
    hosts: [wiki.localhost, '*.wiki.localhost']
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
  - name: admin
    hosts: [admin.localhost]
    audience: urn:example:admin
    launcher: false
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
";
        let c = crate::config::load_str(
            yaml,
            std::path::Path::new("/tmp/otpgate.yaml"),
            Vec::<(String, String)>::new(),
        )
        .unwrap()
        .config;
        let out = apps_list(&c).unwrap();
        assert_eq!(
            out,
            "wiki  hosts wiki.localhost,*.wiki.localhost  origin http://wiki.localhost:8080  audience otpgate:app:wiki  launcher yes
admin  hosts admin.localhost  origin http://admin.localhost:8080  audience urn:example:admin  launcher no
portal http://auth.localhost:8080 (assertions are issued by it)
"
        );
    }
}
