#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_drove::fuzzing::endpoints_reply(data));
