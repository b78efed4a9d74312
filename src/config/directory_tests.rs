//! The `directory` section's loading and validation, and the documented directory blocks.

use std::path::Path;

use super::tests::{MINIMAL, errors, load_text};
use super::*;

#[test]
fn directory_defaults_and_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ldap-password"), "s3cret\n").unwrap();
    let text = format!(
        "{MINIMAL}directory:
  url: ldap://127.0.0.1:389
  bind_dn: cn=reader,dc=example,dc=org
  bind_password_file: ldap-password
  users: {{ base: 'ou=people,dc=example,dc=org' }}
  groups: {{ base: 'ou=groups,dc=example,dc=org' }}
"
    );
    let l = load_str(
        &text,
        &dir.path().join("otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let d = l.config.directory.as_ref().unwrap();
    assert_eq!(d.url, "ldap://127.0.0.1:389");
    assert!(!d.starttls);
    assert_eq!(d.bind_dn.as_deref(), Some("cn=reader,dc=example,dc=org"));
    assert_eq!(d.bind_password.as_ref().unwrap().expose(), "s3cret");
    assert!(!format!("{d:?}").contains("s3cret"), "never printed");
    assert_eq!(d.users.filter, "(objectClass=inetOrgPerson)");
    assert_eq!(d.users.id, "mail");
    assert_eq!(d.users.temp_auth_email, None);
    assert_eq!(d.users.member_of, None);
    let g = d.groups.as_ref().unwrap();
    assert_eq!(g.name, "cn");
    assert_eq!(g.member, "member");
    assert_eq!(g.filter, "(|(objectClass=groupOfNames)(objectClass=group))");
    assert_eq!(d.refresh, std::time::Duration::from_secs(300));
    assert_eq!(d.timeout, std::time::Duration::from_secs(30));
    assert_eq!(d.page_size, 500);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    // The fingerprint follows what decides a snapshot's content, not the secret or timing.
    let mut other = d.clone();
    other.refresh = std::time::Duration::from_secs(1);
    other.bind_password = None;
    assert_eq!(other.fingerprint(), d.fingerprint());
    other.users.filter = "(objectClass=person)".into();
    assert_ne!(other.fingerprint(), d.fingerprint());
}

#[test]
fn directory_for_active_directory_with_member_of_and_inline_password() {
    let l = load_text(&format!(
        "{MINIMAL}directory:
  url: ldaps://dc1.corp.example
  bind_dn: CN=otpgate,OU=Service Accounts,DC=corp,DC=example
  bind_password: inline-for-tests
  users:
    base: OU=Staff,DC=corp,DC=example
    filter: '(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))'
    id: userPrincipalName
    temp_auth_email: otherMailbox
    member_of: memberOf
  refresh: 10m
"
    ))
    .unwrap();
    let d = l.config.directory.unwrap();
    assert_eq!(d.users.id, "userPrincipalName");
    assert_eq!(d.users.member_of.as_deref(), Some("memberOf"));
    assert!(d.groups.is_none());
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|x| x.starts_with("directory.bind_password: an inline secret")),
        "{w:?}"
    );
}

#[test]
fn directory_problems_have_key_paths() {
    let errs = errors(&format!(
        "{MINIMAL}directory:
  url: http://dc1.corp.example
  bind_dn: 'cn reader'
  users: {{ base: '', filter: 'objectClass=person', id: 'ma il' }}
  groups: {{ base: 'ou=groups,dc=x', filter: '(cn=a', member: '' }}
  refresh: 0s
  page_size: 0
"
    ));
    for want in [
        "directory.url: expected ldap:// or ldaps://",
        "directory.bind_dn: invalid DN",
        "directory.bind_password_file: required with bind_dn",
        "directory.users.base: must not be empty",
        "directory.users.filter: invalid LDAP filter",
        "directory.users.id: invalid attribute name",
        "directory.groups.filter: invalid LDAP filter",
        "directory.groups.member: invalid attribute name",
        "directory.refresh: must be longer than 0s",
        "directory.page_size: must be between 1 and 100000",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
    }
    let errs = errors(&format!(
        "{MINIMAL}directory: {{ url: 'ldaps://dc1.corp.example', starttls: true, users: {{ base: 'dc=x' }}, colour: blue }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("directory.colour: unknown field `colour`")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{MINIMAL}directory: {{ url: 'ldaps://dc1.corp.example', starttls: true, users: {{ base: 'dc=x' }} }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("directory.starttls: ldaps://")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{MINIMAL}directory: {{ url: 'ldap://u:p@dc1.corp.example/dc=x?mail', users: {{ base: 'dc=x' }} }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("directory.url: must not contain a user name")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{MINIMAL}directory: {{ url: 'ldap://dc1.corp.example/dc=x?mail', users: {{ base: 'dc=x' }} }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("directory.url: expected ldap://host[:port]")),
        "{errs:?}"
    );
}

#[test]
fn directory_warnings_cleartext_and_anonymous() {
    let l = load_text(&format!(
        "{MINIMAL}directory: {{ url: 'ldap://dc1.corp.example', users: {{ base: 'dc=x' }} }}\n"
    ))
    .unwrap();
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|x| x.starts_with("directory.url: ldap:// without starttls")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|x| x.starts_with("directory.bind_dn: no bind_dn")),
        "{w:?}"
    );
    let l = load_text(&format!(
        "{MINIMAL}directory: {{ url: 'ldap://dc1.corp.example:389', starttls: true, users: {{ base: 'dc=x' }} }}\n"
    ))
    .unwrap();
    assert!(
        l.warnings.iter().all(|p| p.path != "directory.url"),
        "{:?}",
        l.warnings
    );
}

/// The `directory` blocks the documentation shows: the commented one in the example config and
/// the OpenLDAP and Active Directory examples in the README.
fn documented_directory_blocks() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/otpgate.example.yaml")).unwrap();
    let mut blocks = Vec::new();
    let commented: Vec<&str> = example
        .lines()
        .skip_while(|l| !l.starts_with("# directory:"))
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(""))
        .collect();
    blocks.push(commented.join("\n"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for fenced in readme.split("```yaml\n").skip(1) {
        let block = fenced.split("```").next().unwrap();
        if block.starts_with("directory:") {
            blocks.push(block.to_owned());
        }
    }
    blocks
}

#[test]
fn documented_directory_examples_load() {
    let blocks = documented_directory_blocks();
    assert_eq!(
        blocks.len(),
        3,
        "the example config's block and the README's OpenLDAP and AD examples"
    );
    for block in blocks {
        let dir = tempfile::tempdir().unwrap();
        // The files the examples name, so that only the examples' own text is checked.
        for line in block.lines() {
            let Some((key, value)) = line.trim().split_once(": ") else {
                continue;
            };
            let value = value.split(" #").next().unwrap().trim();
            let path = dir.path().join(value);
            match key {
                "bind_password_file" => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, "pw\n").unwrap();
                }
                "ca_file" => {
                    let key = rcgen::KeyPair::generate().unwrap();
                    let cert = rcgen::CertificateParams::new(vec!["ca.example".to_owned()])
                        .unwrap()
                        .self_signed(&key)
                        .unwrap();
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, cert.pem()).unwrap();
                }
                _ => {}
            }
        }
        let l = load_str(
            &format!("{MINIMAL}{block}\n"),
            &dir.path().join("otpgate.yaml"),
            Vec::<(String, String)>::new(),
        )
        .unwrap_or_else(|e| panic!("{block}\n{:?}", e.errors));
        let d = l.config.directory.unwrap();
        assert!(d.bind_password.is_some() && !d.ca.is_empty(), "{block}");
        assert!(l.warnings.is_empty(), "{block}\n{:?}", l.warnings);
    }
}
