//! STS answers cross the network: any status, any body.
#![no_main]
use concourse_sts::aws::{sts::parse_assume_role, HttpResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (status, body) = input;
    let _ = parse_assume_role(&HttpResponse::new(status, body));
});
