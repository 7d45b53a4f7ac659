//! Team documents come from whoever can write the key-value store.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(team) = concourse_sts::config::parse_team("team/t1", data) {
        assert_eq!(team.name, "t1");
    }
});
