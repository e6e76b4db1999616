#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_native::fuzzing::chunked_body(data));
