//! Templates and role patterns come from application variables; a rendered path must
//! always keep its team's own segment.
#![no_main]
use concourse_sts::roles::AllowedRoles;
use concourse_sts::template::SecretPathTemplate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = AllowedRoles::parse(text);
    if let Ok(template) = text.parse::<SecretPathTemplate>() {
        let path = template.render("team-a", "acct");
        assert!(path.as_str().contains("/team-a/"));
    }
});
