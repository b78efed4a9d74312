use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn pol(name: &str, action: Action, include: Vec<Selector>) -> Policy {
    Policy {
        name: name.into(),
        action,
        paths: vec![],
        include,
        require: vec![],
        exclude: vec![],
    }
}

fn req(path: &str, ip: &str) -> Request<'static> {
    let ip: IpAddr = ip.parse().unwrap();
    Request {
        path: Box::leak(path.to_owned().into_boxed_str()),
        ip,
    }
}

struct Who {
    email: Email,
    groups: Vec<Arc<str>>,
    method: LoginMethod,
}

impl Who {
    fn new(e: &str, groups: &[&str]) -> Self {
        Self {
            email: email(e),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            method: LoginMethod::OneTimePin,
        }
    }
    fn id(&self) -> Identity<'_> {
        Identity {
            email: &self.email,
            groups: &self.groups,
            login_method: self.method,
        }
    }
}

fn spec_example() -> Vec<Policy> {
    vec![
        Policy {
            paths: vec!["/static/".into()],
            ..pol("public-assets", Action::Bypass, vec![])
        },
        Policy {
            require: vec![Selector::Group("engineering".into())],
            exclude: vec![Selector::Email(email("mallory@corp.example"))],
            ..pol(
                "staff",
                Action::Allow,
                vec![
                    Selector::EmailDomain("corp.example".into()),
                    Selector::Email(email("guest@partner.example")),
                ],
            )
        },
    ]
}

#[test]
fn deny_by_default() {
    let who = Who::new("a@b.example", &[]);
    assert_eq!(
        decide(&[], &req("/", "10.0.0.1"), Some(&who.id())),
        Decision::NoMatch
    );
    assert_eq!(decide(&[], &req("/", "10.0.0.1"), None), Decision::NoMatch);
}

#[test]
fn spec_example_matrix() {
    let ps = spec_example();
    let r = req("/app", "192.0.2.7");
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        ("alice@corp.example", &["engineering"], Some("staff")),
        ("alice@corp.example", &[], None),
        ("mallory@corp.example", &["engineering"], None),
        ("guest@partner.example", &["engineering"], Some("staff")),
        ("guest@partner.example", &["sales"], None),
        ("other@partner.example", &["engineering"], None),
        ("alice@sub.corp.example", &["engineering"], None),
    ];
    for (e, g, want) in cases {
        let who = Who::new(e, g);
        let d = decide(&ps, &r, Some(&who.id()));
        match want {
            Some(name) => assert!(
                matches!(d, Decision::Allow(p) if p.name == *name),
                "{e} {g:?}: {d:?}"
            ),
            None => assert_eq!(d, Decision::NoMatch, "{e} {g:?}"),
        }
    }
    // The bypass covers static paths for everyone, logged in or not.
    assert!(matches!(
        decide(&ps, &req("/static/app.js", "192.0.2.7"), None),
        Decision::Bypass(_)
    ));
    // Anything else needs a login first.
    assert!(matches!(decide(&ps, &r, None), Decision::LoginRequired(p) if p.name == "staff"));
}

#[test]
fn first_match_decides() {
    let ps = vec![
        pol(
            "block-mallory",
            Action::Block,
            vec![Selector::Email(email("mallory@corp.example"))],
        ),
        pol("everyone", Action::Allow, vec![Selector::Everyone]),
    ];
    let m = Who::new("mallory@corp.example", &[]);
    let a = Who::new("alice@corp.example", &[]);
    assert!(matches!(
        decide(&ps, &req("/", "10.0.0.1"), Some(&m.id())),
        Decision::Block(_)
    ));
    assert!(matches!(
        decide(&ps, &req("/", "10.0.0.1"), Some(&a.id())),
        Decision::Allow(_)
    ));
    // Before a login the block's outcome is unknown: ask for a login, decide afterwards.
    assert!(
        matches!(decide(&ps, &req("/", "10.0.0.1"), None), Decision::LoginRequired(p) if p.name == "block-mallory")
    );
}

#[test]
fn ip_rules_decide_without_identity() {
    let ps = vec![
        pol(
            "block-lan",
            Action::Block,
            vec![Selector::Ip("10.0.0.0/8".parse().unwrap())],
        ),
        pol(
            "office",
            Action::Bypass,
            vec![Selector::Ip("192.0.2.0/24".parse().unwrap())],
        ),
        pol("rest", Action::Allow, vec![Selector::Everyone]),
    ];
    assert!(matches!(
        decide(&ps, &req("/", "10.1.2.3"), None),
        Decision::Block(_)
    ));
    assert!(matches!(
        decide(&ps, &req("/", "192.0.2.9"), None),
        Decision::Bypass(_)
    ));
    assert!(matches!(
        decide(&ps, &req("/", "198.51.100.1"), None),
        Decision::LoginRequired(_)
    ));
    assert!(matches!(
        decide(&ps, &req("/", "2001:db8::1"), None),
        Decision::LoginRequired(_)
    ));
}

#[test]
fn require_and_exclude() {
    let p = Policy {
        require: vec![
            Selector::Group("a".into()),
            Selector::LoginMethod(LoginMethod::OneTimePin),
        ],
        exclude: vec![Selector::Group("banned".into())],
        ..pol("p", Action::Allow, vec![Selector::Everyone])
    };
    let ps = [p];
    let r = req("/", "10.0.0.1");
    assert!(decide(&ps, &r, Some(&Who::new("x@y.example", &["a"]).id())).permits());
    assert!(!decide(&ps, &r, Some(&Who::new("x@y.example", &["b"]).id())).permits());
    assert!(
        !decide(
            &ps,
            &r,
            Some(&Who::new("x@y.example", &["a", "banned"]).id())
        )
        .permits()
    );
    let mut link = Who::new("x@y.example", &["a"]);
    link.method = LoginMethod::OneTimeLink;
    assert!(!decide(&ps, &r, Some(&link.id())).permits());
}

#[test]
fn paths_are_segment_prefixes() {
    let ps = vec![
        Policy {
            paths: vec!["/admin".into()],
            ..pol("admin", Action::Block, vec![Selector::Everyone])
        },
        pol("rest", Action::Allow, vec![Selector::Everyone]),
    ];
    let who = Who::new("a@b.example", &[]);
    for blocked in ["/admin", "/admin/", "/admin/users", "/admin;jsessionid=1"] {
        assert!(
            matches!(
                decide(&ps, &req(blocked, "10.0.0.1"), Some(&who.id())),
                Decision::Block(_)
            ),
            "{blocked}"
        );
    }
    for allowed in ["/", "/administrator", "/x/admin"] {
        assert!(
            decide(&ps, &req(allowed, "10.0.0.1"), Some(&who.id())).permits(),
            "{allowed}"
        );
    }
}

#[test]
fn allow_everyone_still_needs_a_login() {
    let ps = vec![pol("all", Action::Allow, vec![Selector::Everyone])];
    assert!(matches!(
        decide(&ps, &req("/", "10.0.0.1"), None),
        Decision::LoginRequired(_)
    ));
}

#[test]
fn explain_names_the_deciding_policy() {
    let ps = spec_example();
    let who = Who::new("mallory@corp.example", &["engineering"]);
    let (d, steps) = explain(&ps, &req("/x", "10.0.0.1"), Some(&who.id()));
    assert_eq!(d, Decision::NoMatch);
    assert_eq!(steps.len(), 2);
    assert!(
        steps[0]
            .verdict
            .starts_with("skipped: path /x is not under /static/"),
        "{}",
        steps[0].verdict
    );
    assert!(
        steps[1]
            .verdict
            .contains("exclude [email mallory@corp.example: yes]"),
        "{}",
        steps[1].verdict
    );
    let alice = Who::new("alice@corp.example", &["engineering"]);
    let (d, steps) = explain(&ps, &req("/x", "10.0.0.1"), Some(&alice.id()));
    assert!(matches!(d, Decision::Allow(p) if p.name == "staff"));
    assert_eq!(steps.last().unwrap().policy, "staff");
}

#[test]
fn detects_policies_that_can_never_allow() {
    assert!(!can_allow_anyone(&[]));
    assert!(!can_allow_anyone(&[pol(
        "b",
        Action::Block,
        vec![Selector::Everyone]
    )]));
    // The Cloudflare pitfall: a "deny everyone" first makes every later rule dead.
    assert!(!can_allow_anyone(&[
        pol("deny", Action::Block, vec![Selector::Everyone]),
        pol(
            "allow",
            Action::Allow,
            vec![Selector::EmailDomain("corp.example".into())]
        ),
    ]));
    assert!(!can_allow_anyone(&[Policy {
        exclude: vec![Selector::Everyone],
        ..pol("a", Action::Allow, vec![Selector::Everyone])
    }]));
    assert!(!can_allow_anyone(&[Policy {
        require: vec![
            Selector::Email(email("a@x.example")),
            Selector::Email(email("b@x.example"))
        ],
        ..pol("a", Action::Allow, vec![Selector::Everyone])
    }]));
    assert!(!can_allow_anyone(&[Policy {
        require: vec![
            Selector::Email(email("a@x.example")),
            Selector::EmailDomain("y.example".into())
        ],
        ..pol("a", Action::Allow, vec![Selector::Everyone])
    }]));
    assert!(!can_allow_anyone(&[Policy {
        exclude: vec![Selector::Email(email("a@x.example"))],
        ..pol(
            "a",
            Action::Allow,
            vec![Selector::Email(email("a@x.example"))]
        )
    }]));
    // Satisfiable ones.
    assert!(can_allow_anyone(&[pol(
        "a",
        Action::Allow,
        vec![Selector::Everyone]
    )]));
    assert!(can_allow_anyone(&[
        Policy {
            paths: vec!["/admin".into()],
            ..pol("deny-admin", Action::Block, vec![Selector::Everyone])
        },
        pol("allow", Action::Allow, vec![Selector::Everyone]),
    ]));
    assert!(can_allow_anyone(&[Policy {
        paths: vec!["/static/".into()],
        ..pol("b", Action::Bypass, vec![])
    }]));
}

fn selector_strategy() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::Everyone),
        prop::sample::select(vec!["a@x.example", "b@x.example", "c@y.example"])
            .prop_map(|e| Selector::Email(email(e))),
        prop::sample::select(vec!["x.example", "y.example"])
            .prop_map(|d| Selector::EmailDomain(d.into())),
        prop::sample::select(vec!["g1", "g2"]).prop_map(|g| Selector::Group(g.into())),
        prop::sample::select(vec!["10.0.0.0/8", "192.0.2.0/24"])
            .prop_map(|n| Selector::Ip(n.parse().unwrap())),
        prop::sample::select(LoginMethod::ALL.to_vec()).prop_map(Selector::LoginMethod),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec![Action::Allow, Action::Block, Action::Bypass]),
        prop::collection::vec(prop::sample::select(vec!["/a", "/b/", "/"]), 0..2),
        prop::collection::vec(selector_strategy(), 1..3),
        prop::collection::vec(selector_strategy(), 0..2),
        prop::collection::vec(selector_strategy(), 0..2),
    )
        .prop_map(|(action, paths, include, require, exclude)| {
            let anon = |v: Vec<Selector>| -> Vec<Selector> {
                if action == Action::Bypass {
                    v.into_iter().filter(Selector::is_anonymous).collect()
                } else {
                    v
                }
            };
            Policy {
                name: "p".into(),
                action,
                paths: paths.into_iter().map(String::from).collect(),
                include: anon(include),
                require: anon(require),
                exclude: anon(exclude),
            }
        })
}

proptest! {
    /// The pre-login decision never contradicts the post-login one: whatever is decided without
    /// an identity (bypass, block, no match) is what every identity gets too.
    #[test]
    fn anonymous_decisions_are_sound(
        ps in prop::collection::vec(policy_strategy(), 0..5),
        path in prop::sample::select(vec!["/", "/a", "/a/x", "/b/", "/b/y", "/c"]),
        ip in prop::sample::select(vec!["10.1.1.1", "192.0.2.1", "198.51.100.1"]),
        e in prop::sample::select(vec!["a@x.example", "b@x.example", "c@y.example"]),
        groups in prop::collection::vec(prop::sample::select(vec!["g1", "g2"]), 0..2),
        method in prop::sample::select(LoginMethod::ALL.to_vec()),
    ) {
        let r = req(path, ip);
        let who = Who { email: email(e), groups: groups.into_iter().map(Arc::from).collect(), method };
        let before = decide(&ps, &r, None);
        let after = decide(&ps, &r, Some(&who.id()));
        match before {
            Decision::LoginRequired(_) => prop_assert!(!matches!(after, Decision::LoginRequired(_))),
            Decision::Bypass(p) => prop_assert_eq!(after, Decision::Bypass(p)),
            Decision::Block(p) => prop_assert_eq!(after, Decision::Block(p)),
            Decision::NoMatch => prop_assert_eq!(after, Decision::NoMatch),
            Decision::Allow(_) => prop_assert!(false, "allow without an identity"),
            Decision::ServiceAuth(_) => prop_assert!(false, "service_auth for a person"),
        }
        // With an identity, the answer is never "log in".
        prop_assert!(!matches!(after, Decision::LoginRequired(_)));
        // If no policy can allow anyone, nothing is ever permitted.
        if !can_allow_anyone(&ps) {
            prop_assert!(!after.permits());
        }
    }
}
