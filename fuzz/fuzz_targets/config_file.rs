#![no_main]

// Any text, as a TOML file and as a Gatehouse `.exs` file: a configuration or an error with
// a position, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gatehouse_config::parse(text, std::path::Path::new("fuzz.toml"));
        let _ = gatehouse_config::parse(text, std::path::Path::new("fuzz.exs"));
    }
});
