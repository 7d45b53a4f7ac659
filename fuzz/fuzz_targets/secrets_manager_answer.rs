//! Secrets Manager answers cross the network: any status, any body.
#![no_main]
use concourse_sts::aws::{secrets::check_write, HttpResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (status, body) = input;
    let _ = check_write(&HttpResponse::new(status, body));
});
