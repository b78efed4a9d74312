//! Policies deciding service tokens: `service_auth` is for services only, `allow` for people
//! only, and a token never stands in for a person nor a person for a token.

use std::net::IpAddr;

use super::*;

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

fn req(path: &'static str) -> Request<'static> {
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    Request { path, ip }
}

#[test]
fn service_auth_lets_the_named_token_in_and_no_other() {
    let ps = [pol(
        "ci",
        Action::ServiceAuth,
        vec![Selector::ServiceToken("ci".into())],
    )];
    assert_eq!(
        decide_service(&ps, &req("/"), "ci"),
        Decision::ServiceAuth(&ps[0])
    );
    assert_eq!(decide_service(&ps, &req("/"), "other"), Decision::NoMatch);
}

#[test]
fn any_service_token_matches_every_valid_token() {
    let ps = [pol(
        "svc",
        Action::ServiceAuth,
        vec![Selector::AnyServiceToken],
    )];
    assert!(decide_service(&ps, &req("/"), "a").permits());
    assert!(decide_service(&ps, &req("/"), "b").permits());
}

#[test]
fn service_auth_never_matches_a_person_nor_asks_for_a_login() {
    let ps = [pol("svc", Action::ServiceAuth, vec![Selector::Everyone])];
    assert_eq!(decide(&ps, &req("/"), None), Decision::NoMatch);
    let e = Email::parse("a@corp.example").unwrap();
    let who = Identity {
        email: &e,
        groups: &[],
        login_method: LoginMethod::OneTimePin,
    };
    assert_eq!(decide(&ps, &req("/"), Some(&who)), Decision::NoMatch);
}

#[test]
fn allow_policies_are_for_people_and_never_admit_a_service() {
    let ps = [
        pol("people", Action::Allow, vec![Selector::Everyone]),
        pol("svc", Action::ServiceAuth, vec![Selector::AnyServiceToken]),
    ];
    // The allow is skipped for the service; the service_auth after it decides.
    assert_eq!(
        decide_service(&ps, &req("/"), "ci"),
        Decision::ServiceAuth(&ps[1])
    );
    let only_allow = [pol("people", Action::Allow, vec![Selector::Everyone])];
    assert_eq!(
        decide_service(&only_allow, &req("/"), "ci"),
        Decision::NoMatch
    );
}

#[test]
fn person_selectors_never_match_a_service() {
    let ps = [pol(
        "svc",
        Action::Block,
        vec![Selector::EmailDomain("corp.example".into())],
    )];
    assert_eq!(decide_service(&ps, &req("/"), "ci"), Decision::NoMatch);
}

#[test]
fn block_and_bypass_apply_to_services_as_written() {
    let ps = [
        pol(
            "no-ci",
            Action::Block,
            vec![Selector::ServiceToken("ci".into())],
        ),
        pol("svc", Action::ServiceAuth, vec![Selector::AnyServiceToken]),
    ];
    assert_eq!(
        decide_service(&ps, &req("/"), "ci"),
        Decision::Block(&ps[0])
    );
    assert!(decide_service(&ps, &req("/"), "other").permits());
    let open = [pol("open", Action::Bypass, vec![])];
    assert_eq!(
        decide_service(&open, &req("/"), "ci"),
        Decision::Bypass(&open[0])
    );
}

#[test]
fn token_selectors_are_known_false_for_people_before_a_login() {
    // A block on a token does not make anonymous people log in.
    let ps = [
        pol(
            "no-ci",
            Action::Block,
            vec![Selector::ServiceToken("ci".into())],
        ),
        pol("open", Action::Bypass, vec![]),
    ];
    assert_eq!(decide(&ps, &req("/"), None), Decision::Bypass(&ps[1]));
}

#[test]
fn explain_names_the_service_auth_policy_and_skips_allow() {
    let ps = [
        pol("people", Action::Allow, vec![Selector::Everyone]),
        pol(
            "svc",
            Action::ServiceAuth,
            vec![Selector::ServiceToken("ci".into())],
        ),
    ];
    let (d, steps) = explain_service(&ps, &req("/"), "ci");
    assert_eq!(d, Decision::ServiceAuth(&ps[1]));
    assert!(
        steps[0].verdict.contains("people only"),
        "{}",
        steps[0].verdict
    );
    assert!(
        steps[1].verdict.contains("service_token ci: yes"),
        "{}",
        steps[1].verdict
    );
    assert_eq!(Action::parse("service_auth"), Some(Action::ServiceAuth));
    assert!(can_allow_anyone(&ps[1..]));
}
